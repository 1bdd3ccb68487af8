"""The image safety checker: a model that flags images, run on the device after the VAE decode.

A Stable Diffusion 1.x/2.x repository ships ``safety_checker/`` (``StableDiffusionSafetyChecker``, CLIP
image embeddings compared against concept embeddings) and ``feature_extractor/``. Left inside the
pipeline it replaces flagged images with black ones and the flag is thrown away; so the pipeline is
always loaded without it (``safety_checker=None``), and the server runs it itself: one call per batch,
on the batch's decoded images, and applies the model's action (:mod:`.moderation`) to what it flags.
The checker's own output images (black where flagged) are never used: only its flags.

``safety.checker``: ``none``; ``auto`` (the pipeline's own when it ships one); ``pipeline`` (its own,
required); or a directory holding a checker as CompVis/stable-diffusion-safety-checker does
(``config.json``, weights and ``preprocessor_config.json``; without the latter, the pipeline's
``feature_extractor/`` is used).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubediffusion.api.pipelines import SafetyConfig
from kubediffusion.inference.backend import ModelLoadError

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

CHECKER_DIR = "safety_checker"
PROCESSOR_DIR = "feature_extractor"
PROCESSOR_CONFIG = "preprocessor_config.json"
_DEFAULT_CHECKER = ("stable_diffusion", "StableDiffusionSafetyChecker")


def pipeline_load_kwargs(index: Mapping[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that keep a checker out of the pipeline (see the module)."""
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


class ImageChecker:
    """A loaded checker and its image processor; ``flag`` answers one bool per image."""

    def __init__(self, model: Any, processor: Any, *, device: str, dtype: Any, source: Path) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.source = source

    @property
    def name(self) -> str:
        return type(self.model).__name__

    def flag(self, images: Sequence[Image]) -> list[bool]:
        if not images:
            return []
        import numpy
        import torch

        pixels = self.processor(list(images), return_tensors="pt").pixel_values.to(self.device, self.dtype)
        placeholders = [numpy.zeros(1) for _ in images]  # it blacks out what it flags: not our images
        with torch.inference_mode():
            _, flags = self.model(clip_input=pixels, images=placeholders)
        return [bool(flag) for flag in flags]


def _checker_class(entry: Any) -> Any:
    library, name = entry if isinstance(entry, list) and len(entry) == 2 and entry[0] else _DEFAULT_CHECKER
    module: Any = importlib.import_module(f"diffusers.pipelines.{library}")
    cls = getattr(module, str(name), None)
    if cls is None:
        raise ModelLoadError(f"safety checker class {library}.{name} is not in diffusers")
    return cls


def _ships_checker(model_dir: Path, index: Mapping[str, Any]) -> bool:
    entry = index.get("safety_checker")
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None and (model_dir / CHECKER_DIR).is_dir()


def load_checker(
    safety: SafetyConfig, model_dir: Path, index: Mapping[str, Any], *, device: str, dtype: Any
) -> ImageChecker | None:
    """The configured checker on ``device``, or None (``none``, or ``auto`` on a model without one)."""
    if safety.checker == "none":
        return None
    path = safety.checker_path
    if path is None:
        if not _ships_checker(model_dir, index):
            if safety.checker == "pipeline":
                raise ModelLoadError(f"safety.checker is 'pipeline' but {model_dir} ships no safety checker")
            return None
        directory, cls = model_dir / CHECKER_DIR, _checker_class(index.get("safety_checker"))
        processor_dirs = [model_dir / PROCESSOR_DIR, directory]
    else:
        directory, cls = Path(path), _checker_class(None)
        processor_dirs = [directory, model_dir / PROCESSOR_DIR]
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"safety.checker: {directory} is not a checker directory (no config.json)")
    processor_dir = next((d for d in processor_dirs if (d / PROCESSOR_CONFIG).is_file()), None)
    if processor_dir is None:
        raise ModelLoadError(f"safety.checker: no {PROCESSOR_CONFIG} in {' or '.join(map(str, processor_dirs))}")
    from transformers import CLIPImageProcessor

    # The checker warns "a black image will be returned" for every flag; here it is not.
    logging.getLogger(cls.__module__).setLevel(logging.ERROR)
    try:
        model = cls.from_pretrained(str(directory), local_files_only=True).to(device=device, dtype=dtype).eval()
        processor = CLIPImageProcessor.from_pretrained(str(processor_dir), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"safety.checker: could not load {directory}: {type(exc).__name__}: {exc}") from exc
    log.info("safety checker %s from %s; action on flagged images: %s", type(model).__name__, directory, safety.action)
    return ImageChecker(model, processor, device=device, dtype=dtype, source=directory)
