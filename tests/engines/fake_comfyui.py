"""A fake ComfyUI (server.py, execution.py): ``POST /prompt`` validated as ComfyUI's ``validate_prompt``
does for the classes it knows (a 400 ``{"error": {"type", "message", "details", "extra_info"},
"node_errors"}``), ``GET /history/{prompt_id}`` (``{}`` until done, then ``prompt``, ``outputs``,
``status``), ``GET /view``, ``POST /queue`` (delete), ``GET /system_stats``. The images: one per
``EmptyLatentImage`` batch item, painted from the ``KSampler`` seed plus the batch index."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.engines.upstream import Behaviour, broken_answer, png, seed_colour

CHECKPOINTS = ("fake-sd15.safetensors",)
REQUIRED = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "KSampler": {
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
        "model",
        "positive",
        "negative",
        "latent_image",
    },
    "VAEDecode": {"samples", "vae"},
    "SaveImage": {"images", "filename_prefix"},
}


def validation_error(details: str, node_errors: dict[str, Any]) -> JSONResponse:
    error = {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": details,
        "extra_info": {},
    }
    return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)


def check(prompt: dict[str, Any]) -> JSONResponse | None:
    for node_id, node in prompt.items():
        kind = node.get("class_type")
        if kind not in REQUIRED:
            return validation_error(f"Cannot execute because node {kind} does not exist.", {})
        inputs = node.get("inputs", {})
        if missing := REQUIRED[kind] - set(inputs):
            return validation_error(f"Required input is missing: {sorted(missing)[0]}", {node_id: {"errors": []}})
        for value in inputs.values():
            if isinstance(value, list) and (len(value) != 2 or value[0] not in prompt):
                return validation_error(f"Bad link {value}", {node_id: {"errors": []}})
        if kind == "CheckpointLoaderSimple" and inputs["ckpt_name"] not in CHECKPOINTS:
            details = f"ckpt_name: '{inputs['ckpt_name']}' not in {list(CHECKPOINTS)}"
            return validation_error(f"Value not in list: {details}", {node_id: {"errors": [{"details": details}]}})
        if kind in ("EmptyLatentImage", "KSampler") and not all(
            isinstance(inputs[name], int)
            for name in ("width", "height", "batch_size", "seed", "steps")
            if name in inputs
        ):
            return validation_error("Failed to convert an input value to a INT value", {node_id: {"errors": []}})
    return None


def app(behaviour: Behaviour) -> FastAPI:
    api = FastAPI()
    prompts: dict[str, dict[str, Any]] = {}
    files: dict[str, bytes] = {}

    @api.get("/system_stats")
    async def system_stats() -> Response:
        if not behaviour.healthy:
            return Response(status_code=503)
        return JSONResponse({"system": {"os": "posix", "comfyui_version": "fake"}, "devices": []})

    @api.post("/prompt")
    async def post_prompt(request: Request) -> Response:
        body = await request.json()
        behaviour.requests.append(body)
        if (broken := await broken_answer(behaviour)) is not None:
            return broken
        if behaviour.failure == "4xx":
            return validation_error("The fake refuses this prompt", {})
        if "prompt" not in body:
            return JSONResponse({"error": "no prompt", "node_errors": []}, status_code=400)
        if (refusal := check(body["prompt"])) is not None:
            return refusal
        prompt_id = str(uuid.uuid4())
        prompts[prompt_id] = {
            "prompt": body["prompt"],
            "ready_at": time.monotonic() + behaviour.delay_s,
            "failed": behaviour.failure == "job_failed",
            "number": len(prompts),
        }
        return JSONResponse({"prompt_id": prompt_id, "number": len(prompts), "node_errors": {}})

    @api.get("/history/{prompt_id}")
    async def history(prompt_id: str) -> Response:
        entry = prompts.get(prompt_id)
        if entry is None or time.monotonic() < entry["ready_at"] or prompt_id in behaviour.cancelled:
            return JSONResponse({})
        nodes = entry["prompt"]
        if entry["failed"]:
            error = {"prompt_id": prompt_id, "node_id": "3", "node_type": "KSampler"}
            error |= {"exception_type": "torch.OutOfMemoryError", "exception_message": "Allocation on device (fake)"}
            status = {"status_str": "error", "completed": False, "messages": [["execution_error", error]]}
            return JSONResponse({prompt_id: {"prompt": [], "outputs": {}, "status": status}})
        latent = next(node["inputs"] for node in nodes.values() if node["class_type"] == "EmptyLatentImage")
        seed = next(node["inputs"]["seed"] for node in nodes.values() if node["class_type"] == "KSampler")
        outputs: dict[str, Any] = {}
        for node_id, node in nodes.items():
            if node["class_type"] != "SaveImage":
                continue
            saved = []
            for index in range(latent["batch_size"]):
                name = f"{node['inputs']['filename_prefix']}_{prompt_id[:8]}_{index:05}_.png"
                files[name] = png(latent["width"], latent["height"], seed_colour(seed + index))
                saved.append({"filename": name, "subfolder": "", "type": "output"})
            outputs[node_id] = {"images": saved}
        status = {"status_str": "success", "completed": True, "messages": [["execution_success", {}]]}
        return JSONResponse(
            {
                prompt_id: {
                    "prompt": [entry["number"], prompt_id, nodes, {}, list(outputs)],
                    "outputs": outputs,
                    "status": status,
                }
            }
        )

    @api.get("/view")
    async def view(filename: str, type: str = "output", subfolder: str = "") -> Response:
        if type != "output" or filename not in files:
            return Response(status_code=404)
        return Response(files[filename], media_type="image/png")

    @api.post("/queue")
    async def queue(request: Request) -> Response:
        behaviour.cancelled.extend((await request.json()).get("delete", []))
        return Response(status_code=200)

    return api
