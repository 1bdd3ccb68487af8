"""ComfyUI workflows in API format (``{node_id: {"class_type", "inputs"}}``) and their placeholders.

A workflow file (``engine_workflow``) is the JSON ComfyUI's "Save (API)" writes, with placeholders in
string values: ``{{prompt}}``, ``{{negative_prompt}}``, ``{{seed}}``, ``{{steps}}``, ``{{guidance}}``,
``{{width}}``, ``{{height}}``, ``{{batch_size}}``, ``{{model}}`` (``engine_model``) and
``{{sampler}}`` (``engine_sampler``, default ``euler``). A value that is exactly one placeholder
becomes the value itself (a number stays a number); a placeholder inside longer text is replaced as
text (``"a photo of {{prompt}}"``). Unknown placeholders are an error when the file is read.

What a workflow has no placeholder for, it cannot honour: a request that sets that field is a 400
naming it (:func:`refusals`). Without ``{{batch_size}}`` each image is its own prompt (seed ``s + i``);
with it, one prompt makes them all from one seed (ComfyUI draws the batch's noise from it). The built-in
workflow (SD 1.x/2.x and SDXL checkpoints alike) has every placeholder: checkpoint loader, two text
encoders, an empty latent, ``KSampler``, VAE decode, ``SaveImage``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from kubediffusion.inference.backend import ModelLoadError

PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
NAMES = frozenset(
    {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "batch_size", "model", "sampler"}
)
# The request field a placeholder honours (size stands for width and height).
FIELDS = {
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "width": "size",
    "height": "size",
}
SAVE_PREFIX = "kubediffusion"

# ComfyUI's classic text-to-image layout (node ids as its own default workflow numbers them).
BUILT_IN: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{batch_size}}"},
    },
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": "{{steps}}",
            "cfg": "{{guidance}}",
            "sampler_name": "{{sampler}}",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": SAVE_PREFIX, "images": ["8", 0]}},
}


def placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders(item) for item in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(item) for item in value)) if value else set()
    return set()


def load_workflow(path: Path | None) -> dict[str, Any]:
    """The workflow in ``path`` (checked), or the built-in one; ModelLoadError says what is wrong."""
    if path is None:
        return copy.deepcopy(BUILT_IN)
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the ComfyUI workflow {path}: {exc}") from None
    if not isinstance(workflow, dict) or not workflow:
        raise ModelLoadError(f"{path} is not an API-format workflow (an object of nodes); use ComfyUI's Save (API)")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or "inputs" not in node:
            raise ModelLoadError(f"{path}: node {node_id!r} has no class_type and inputs; use ComfyUI's Save (API)")
    found = placeholders(workflow)
    if unknown := found - NAMES:
        raise ModelLoadError(f"{path}: unknown placeholders {sorted(unknown)}; known: {sorted(NAMES)}")
    if "prompt" not in found:
        raise ModelLoadError(f"{path} has no {{{{prompt}}}} placeholder")
    return workflow


def refusals(workflow: dict[str, Any]) -> dict[str, str]:
    """Request fields this workflow cannot honour (it has no placeholder for them), and why."""
    found = placeholders(workflow)
    refused: dict[str, str] = {}
    for name, field in FIELDS.items():
        if name not in found:
            refused.setdefault(field, f"the ComfyUI workflow has no {{{{{name}}}}} placeholder")
    return refused


def fill(workflow: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``workflow`` with every placeholder replaced by its value."""

    def replace(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item) for item in value]
        if not isinstance(value, str):
            return value
        whole = PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), value)

    filled: dict[str, Any] = replace(workflow)
    return filled
