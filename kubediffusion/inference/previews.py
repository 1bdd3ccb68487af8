"""Partial images for streamed requests, made from the intermediate latents in the step callback.

Cheap by design, so a batch with streaming requests in it runs about as fast as one without
(``bench/bench_streaming.py`` measures it): on a preview step, only the latents of the images that want
a preview are mapped to RGB, on the device, and only a small uint8 array crosses to the CPU; upscaling
and PNG/JPEG/WebP encoding happen outside the pipeline thread (the server's preview encoder).

Two decoders:

* **Linear** (always there for 4-channel latents): RGB = latents x a 4x3 matrix (+ bias), per model
  family, the approximation ComfyUI's previews use (coefficients fitted to SD 1.x/2.x and SDXL
  latents). It yields an image at latent resolution (1/8 of each side), upscaled afterwards.
* **Tiny autoencoder**: when the model directory holds a diffusers ``AutoencoderTiny`` in ``taesd/``
  (madebyollin/taesd for SD, taesdxl for SDXL), it decodes full-size previews that look like the
  final image, at a few ms per image on a GPU.

Latents of Euler-family schedulers (``init_noise_sigma`` > 1) carry noise of scale sigma; they are
divided by sqrt(1 + sigma^2) first, so early previews are dim noise rather than saturated colour.
Models whose latents are not 4-channel images (SD3, Flux) get no partial images: their streams carry
the completed events only, which OpenAI's spec allows.

When: for ``partial_images`` N over a run of S denoising steps, after steps ceil(k*S/(N+1)) for
k = 1..N (distinct ones only): evenly spread, the last one before the final image where S allows.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubediffusion.tinymodel import PREVIEW_DECODER_DIR

if TYPE_CHECKING:
    from kubediffusion.inference.backend import ImageJob

log = logging.getLogger(__name__)
# Rows: latent channels; columns: R, G, B. From ComfyUI's latent_formats.py (SD15, SDXL).
LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sd": (
        ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
        (0.1084, -0.0175, -0.0011),
    ),
}


def preview_steps(partial_images: int, total_steps: int) -> frozenset[int]:
    """The steps (1-based counts of finished steps) after which a partial image is made."""
    if partial_images <= 0 or total_steps <= 0:
        return frozenset()
    return frozenset(
        min(total_steps, max(1, math.ceil(k * total_steps / (partial_images + 1))))
        for k in range(1, partial_images + 1)
    )


def family_of(pipeline_class: str) -> str:
    return "sdxl" if "XL" in pipeline_class else "sd"


class PreviewDecoder:
    """Latents (B, 4, h, w) on the device -> uint8 RGB arrays (B, H, W, 3) on the CPU."""

    def __init__(self, family: str, tiny_autoencoder: Any = None) -> None:
        self.family = family
        self.tiny = tiny_autoencoder
        self._weights: dict[Any, tuple[Any, Any]] = {}

    @property
    def kind(self) -> str:
        return "taesd" if self.tiny is not None else f"linear:{self.family}"

    def decode(self, latents: Any) -> Any:
        torch: Any = importlib.import_module("torch")
        if self.tiny is not None:
            image = self.tiny.decode(latents.to(self.tiny.dtype)).sample  # [-1, 1], full size
            rgb = image.permute(0, 2, 3, 1)
        else:
            matrix, bias = self._matrix(latents.device)
            rgb = torch.einsum("bchw,cr->bhwr", latents.float(), matrix) + bias
        return ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()

    def _matrix(self, device: Any) -> tuple[Any, Any]:
        if device not in self._weights:
            torch: Any = importlib.import_module("torch")
            factors, bias = LATENT_RGB[self.family]
            self._weights[device] = (
                torch.tensor(factors, dtype=torch.float32, device=device),
                torch.tensor(bias, dtype=torch.float32, device=device),
            )
        return self._weights[device]


def load_preview_decoder(model_dir: Path, pipe: Any, device: str) -> PreviewDecoder | None:
    """A tiny autoencoder from ``model_dir/taesd`` when there is one, else the linear map for 4-channel
    latents, else None (no partial images)."""
    family = family_of(type(pipe).__name__)
    tiny_dir = Path(model_dir) / PREVIEW_DECODER_DIR
    config = tiny_dir / "config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderTiny":
                diffusers: Any = importlib.import_module("diffusers")
                vae_dtype = getattr(getattr(pipe, "vae", None), "dtype", None)
                tiny = diffusers.AutoencoderTiny.from_pretrained(str(tiny_dir), local_files_only=True)
                tiny = tiny.to(device=device, dtype=vae_dtype) if vae_dtype is not None else tiny.to(device)
                tiny.eval()
                log.info("partial images are decoded by the tiny autoencoder in %s", tiny_dir)
                return PreviewDecoder(family, tiny)
        except Exception as exc:  # a broken optional decoder must not fail the model
            log.warning("could not load the tiny autoencoder in %s (%s); using the linear previews", tiny_dir, exc)
    unet = getattr(pipe, "unet", None)
    channels = getattr(getattr(unet, "config", None), "out_channels", None)
    if channels != 4:
        log.info("no partial images for this model: its latents are not 4-channel images")
        return None
    return PreviewDecoder(family)


class PreviewEmitter:
    """The step callback's share of streaming: which rows of the batch's latents belong to which job,
    and, after each step, the partial images due (see the module docstring for when)."""

    def __init__(self, jobs: Sequence[ImageJob], decoder: PreviewDecoder, fallback_steps: int) -> None:
        self.jobs = jobs
        self.decoder = decoder
        self.fallback_steps = fallback_steps
        self._plans: list[frozenset[int]] | None = None
        self._counts = [0] * len(jobs)
        self.seconds = 0.0  # time spent in previews, for the benchmark

    @staticmethod
    def wanted(jobs: Sequence[ImageJob]) -> bool:
        return any(job.on_partial is not None and job.params.partial_images > 0 for job in jobs)

    def after_step(self, pipe: Any, step_index: int, latents: Any) -> None:
        if self._plans is None:
            total = getattr(pipe, "num_timesteps", None) or self.fallback_steps
            self._plans = [
                preview_steps(job.params.partial_images if job.on_partial else 0, total) for job in self.jobs
            ]
        done = step_index + 1
        due = [index for index, plan in enumerate(self._plans) if done in plan]
        if not due:
            return
        import time

        started = time.perf_counter()
        offsets: list[int] = []
        rows: list[int] = []
        row = 0
        for job in self.jobs:
            offsets.append(row)
            row += len(job.seeds)
        for index in due:
            rows.extend(range(offsets[index], offsets[index] + len(self.jobs[index].seeds)))
        selected = latents[rows] if len(rows) < latents.shape[0] else latents
        rgb = self.decoder.decode(selected / _noise_scale(pipe))
        from PIL import Image

        position = 0
        for index in due:
            job = self.jobs[index]
            partial = self._counts[index]
            self._counts[index] += 1
            for image_index in range(len(job.seeds)):
                if job.on_partial is not None:
                    job.on_partial(image_index, partial, Image.fromarray(rgb[position]))
                position += 1
        self.seconds += time.perf_counter() - started


def _noise_scale(pipe: Any) -> float:
    scheduler = getattr(pipe, "scheduler", None)
    try:
        if float(scheduler.init_noise_sigma) > 1.0:  # type: ignore[union-attr]
            sigma = float(scheduler.sigmas[scheduler.step_index])  # type: ignore[union-attr]
            return math.sqrt(1.0 + sigma * sigma)
    except (AttributeError, IndexError, TypeError):
        pass
    return 1.0
