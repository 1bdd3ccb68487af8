"""The text-to-image graph and batch InvokeAI's session queue runs (``POST .../enqueue_batch``).

Nodes (InvokeAI invocation types and their fields, as in ``invokeai/app/invocations``):
``main_model_loader`` (SD 1.x/2.x) or ``sdxl_model_loader`` (SDXL) with the model's identifier; two
prompt nodes (``compel``; SDXL: ``sdxl_compel_prompt`` with both CLIP encoders and the size as its
original and target size) for the prompt and the negative prompt; ``noise`` (seed, width, height, on the
CPU so a seed gives the same noise everywhere); ``denoise_latents`` (steps, ``cfg_scale``, scheduler,
the whole schedule); ``l2i`` (latents to image, not intermediate: the image is kept and fetched).
The batch's ``data`` zips one seed per image into ``noise.seed``: InvokeAI makes one queue item, one
session and one image per seed, in that order.
"""

from __future__ import annotations

from typing import Any

from kubediffusion.api.schema import GenerationParams

MODEL, POSITIVE, NEGATIVE, NOISE, DENOISE, OUTPUT = (
    "kd_model",
    "kd_positive",
    "kd_negative",
    "kd_noise",
    "kd_denoise",
    "kd_l2i",
)
SD_BASES = frozenset({"sd-1", "sd-2"})
SDXL_BASES = frozenset({"sdxl"})
SUPPORTED_BASES = SD_BASES | SDXL_BASES
DEFAULT_SCHEDULER = "euler"
ORIGIN = "kubediffusion"


def model_identifier(record: dict[str, Any]) -> dict[str, Any]:
    """InvokeAI's ``ModelIdentifierField`` from a model record (``GET /api/v2/models/i/{key}``)."""
    return {name: record[name] for name in ("key", "hash", "name", "base", "type")}


def _edge(source: str, source_field: str, destination: str, destination_field: str) -> dict[str, Any]:
    return {
        "source": {"node_id": source, "field": source_field},
        "destination": {"node_id": destination, "field": destination_field},
    }


def text_to_image_graph(record: dict[str, Any], params: GenerationParams, scheduler: str) -> dict[str, Any]:
    sdxl = record["base"] in SDXL_BASES
    model = model_identifier(record)
    nodes: dict[str, dict[str, Any]] = {
        MODEL: {"type": "sdxl_model_loader" if sdxl else "main_model_loader", "model": model},
        NOISE: {"type": "noise", "seed": 0, "width": params.width, "height": params.height, "use_cpu": True},
        DENOISE: {
            "type": "denoise_latents",
            "steps": params.steps,
            "cfg_scale": params.guidance,
            "scheduler": scheduler,
            "denoising_start": 0.0,
            "denoising_end": 1.0,
        },
        OUTPUT: {"type": "l2i", "is_intermediate": False, "use_cache": False},
    }
    edges = [
        _edge(MODEL, "unet", DENOISE, "unet"),
        _edge(MODEL, "vae", OUTPUT, "vae"),
        _edge(POSITIVE, "conditioning", DENOISE, "positive_conditioning"),
        _edge(NEGATIVE, "conditioning", DENOISE, "negative_conditioning"),
        _edge(NOISE, "noise", DENOISE, "noise"),
        _edge(DENOISE, "latents", OUTPUT, "latents"),
    ]
    for node, text in ((POSITIVE, params.prompt), (NEGATIVE, params.negative_prompt)):
        if sdxl:
            size = {"original_width": params.width, "original_height": params.height}
            size |= {"target_width": params.width, "target_height": params.height, "crop_top": 0, "crop_left": 0}
            nodes[node] = {"type": "sdxl_compel_prompt", "prompt": text, "style": text, **size}
            edges += [_edge(MODEL, "clip", node, "clip"), _edge(MODEL, "clip2", node, "clip2")]
        else:
            nodes[node] = {"type": "compel", "prompt": text}
            edges.append(_edge(MODEL, "clip", node, "clip"))
    for node_id, fields in nodes.items():
        fields["id"] = node_id
        fields.setdefault("is_intermediate", True)
    return {"id": "kd_text_to_image", "nodes": nodes, "edges": edges}


def batch(record: dict[str, Any], params: GenerationParams, seeds: tuple[int, ...], scheduler: str) -> dict[str, Any]:
    """The body of ``enqueue_batch``: the graph, one seed per image, appended to the queue."""
    return {
        "batch": {
            "graph": text_to_image_graph(record, params, scheduler),
            "data": [[{"node_path": NOISE, "field_name": "seed", "items": list(seeds)}]],
            "runs": 1,
            "origin": ORIGIN,
        },
        "prepend": False,
    }
