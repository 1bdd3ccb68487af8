"""Load a diffusers text-to-image pipeline from a local directory, and generate with it.

``load_backend(settings)`` is the ``BackendLoader`` the server uses: it checks the directory first (so
a missing or half-written model fails in milliseconds with a clear message), picks the device (CUDA
when present) and dtype (``auto``, below; float16 on CPU falls back to float32 with a warning), loads offline with
``AutoPipelineForText2Image`` or the named diffusers class, and applies ``accel.optimize_pipeline``.

Determinism: image ``i`` of a request with seed ``s`` uses its own CPU ``torch.Generator`` seeded with
``s + i``, so the same request on the same device gives the same bytes whatever else shares its batch
(within floating-point reproducibility of the device's kernels), padding included.

Per call (:mod:`.shapes`): a compiled pipeline's batch is padded to its bucket and the padding dropped
after the call; the VAE is sliced above ``vae_slicing_pixels``; the output becomes uint8 on the device
and PIL images on the host (encoding is the server's encoding pool's, off this thread). The dtype
``auto`` is bfloat16 on GPUs that have it (the stock SDXL VAE then needs no float32 upcast), else float16.

Edits and variations run the image-to-image and inpainting pipelines that diffusers' ``from_pipe``
makes from the loaded one: new pipeline objects around the *same* modules (UNet, VAE, text encoders,
scheduler), so no second copy of the weights exists, and speed-ups applied to the modules (compile,
fused QKV) apply to every task. A model without such pipelines (``AutoPipelineFor*`` has no mapping for
its class) serves generations only. Image-to-image runs ``int(steps * strength)`` denoising steps (the
diffusers rule); where that would be 0, the schedule is lengthened to ``ceil(1 / strength)`` steps so
exactly one runs. Partial images for streamed requests: :mod:`.previews`.

The model's pipeline settings are applied at load (docs/pipelines.md): component overrides
(:mod:`.components`) are passed to ``from_pretrained`` in place of the pipeline's own, a bundled safety
checker is kept out of the pipeline and run by the server instead (:mod:`.safety`), the schedulers are
made (:mod:`.schedulers`) and the LoRA adapters loaded (:mod:`.adapters`). Per batch, ``generate`` sets
the jobs' adapter set and scheduler (they share them: the batch key) before the pipeline call.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubediffusion.inference.accel import optimize_pipeline
from kubediffusion.inference.adapters import AdapterSwitch, load_adapters
from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError, StepCallback, TaskKind
from kubediffusion.inference.components import load_components
from kubediffusion.inference.phases import step_mark, step_seconds_between
from kubediffusion.inference.previews import PreviewDecoder, PreviewEmitter, load_preview_decoder
from kubediffusion.inference.safety import ImageChecker, load_checker, pipeline_load_kwargs
from kubediffusion.inference.schedulers import SchedulerSet, configure_schedulers
from kubediffusion.inference.shapes import batch_buckets, bucket_for, output_images, padded, set_vae_slicing
from kubediffusion.tinymodel import read_smoke_test_marker

if TYPE_CHECKING:
    from PIL.Image import Image

    from kubediffusion.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
# diffusers/accelerate load through process-global patches (meta-device init), so two pipelines loading
# in two threads at once break each other; one server loads one model, but tests and benchmarks load more.
_LOAD_LOCK = threading.Lock()


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """The parsed model_index.json, or ModelLoadError saying what is wrong with the directory."""
    if not model_dir.exists():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} is not a directory")
    index = model_dir / MODEL_INDEX
    if not index.is_file():
        raise ModelLoadError(
            f"{model_dir} is not a diffusers pipeline: {MODEL_INDEX} is missing (is the cache complete?)"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index} is unreadable or not JSON: {exc}") from None
    if not isinstance(data, dict) or "_class_name" not in data:
        raise ModelLoadError(f"{index} has no _class_name; not a diffusers pipeline")
    return data


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was requested but CUDA is not available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    """``auto``: bfloat16 on GPUs that have it (no float32 upcast of the SDXL VAE, no overflow), else
    float16; float32 on CPU."""
    if requested == "auto":
        if device != "cuda":
            return "float32"
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu" and requested == "float16":
        log.warning("float16 is not supported on CPU; loading the model in float32 instead")
        return "float32"
    return requested


def _pipeline_class(name: str) -> Any:
    import diffusers

    if name == "auto":
        return diffusers.AutoPipelineForText2Image
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelLoadError(f"pipeline {name!r} is not a diffusers pipeline class (or 'auto')")
    return cls


def _dtype_kwarg() -> str:
    """diffusers >= 0.36 renamed ``torch_dtype`` to ``dtype``."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def derive_pipelines(pipe: Any) -> dict[TaskKind, Any]:
    """``pipe`` and the image-to-image and inpainting pipelines diffusers' ``from_pipe`` makes from it
    (sharing its modules; see the module docstring). Kinds it cannot make are left out."""
    diffusers: Any = importlib.import_module("diffusers")
    pipes: dict[TaskKind, Any] = {"txt2img": pipe}
    derived: tuple[tuple[TaskKind, Any], ...] = (
        ("img2img", diffusers.AutoPipelineForImage2Image),
        ("inpaint", diffusers.AutoPipelineForInpainting),
    )
    for kind, auto in derived:
        try:
            pipes[kind] = auto.from_pipe(pipe)
        except Exception as exc:  # no mapping for this class, or a component it cannot share
            log.info("no %s pipeline for %s: %s", kind, type(pipe).__name__, exc)
            continue
        if hasattr(pipes[kind], "set_progress_bar_config"):
            pipes[kind].set_progress_bar_config(disable=True)
    return pipes


def steps_for_strength(steps: int, strength: float) -> int:
    """The schedule length that makes image-to-image run at least one step (see the module docstring)."""
    if int(steps * strength) >= 1:
        return steps
    longer = max(steps, math.ceil(1 / strength))
    while int(longer * strength) < 1:  # float rounding; strength >= 0.01 bounds this
        longer += 1
    return longer


class DiffusersBackend:
    """An ``ImageBackend`` around one loaded diffusers pipeline and those derived from it."""

    def __init__(
        self,
        pipe: Any,
        description: BackendDescription,
        *,
        previews: PreviewDecoder | None = None,
        adapters: AdapterSwitch | None = None,
        schedulers: SchedulerSet | None = None,
        checker: ImageChecker | None = None,
        buckets: tuple[int, ...] = (),
        vae_slicing_pixels: int = 0,
    ) -> None:
        self.pipe = pipe
        self.buckets = buckets  # batch sizes a call is padded to (compiled pipelines, see .shapes)
        self.vae_slicing_pixels = vae_slicing_pixels
        self.pipes = derive_pipelines(pipe)
        self.previews = previews
        self.adapters = adapters
        self.schedulers = schedulers
        self.checker = checker
        self._description = dataclasses.replace(
            description,
            edit_kinds=tuple(kind for kind in self.pipes if kind != "txt2img"),
            previews=previews.kind if previews is not None else None,
            safety_checker=checker.name if checker is not None else None,
            adapters=adapters.names if adapters is not None else (),
            scheduler=type(pipe.scheduler).__name__ if hasattr(pipe, "scheduler") else None,
        )
        self._params = {kind: inspect.signature(p.__call__).parameters for kind, p in self.pipes.items()}
        self._has_negative = "negative_prompt" in self._params["txt2img"]
        self.last_preview_seconds = 0.0  # time the last call spent making partial images (benchmark)

    @property
    def description(self) -> BackendDescription:
        return self._description

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image]]:
        import torch

        first = jobs[0].params
        kind = jobs[0].kind
        pipe = self.pipes.get(kind)
        if pipe is None:
            raise RuntimeError(f"this model has no {kind} pipeline")
        self._choose(pipe, first)
        accepted = self._params[kind]
        count = sum(len(job.seeds) for job in jobs)
        size = bucket_for(count, self.buckets)  # padded slots: see .shapes
        prompts = padded([job.params.prompt for job in jobs for _ in job.seeds], size)
        negatives = padded([job.params.negative_prompt for job in jobs for _ in job.seeds], size)
        seeds = padded([seed for job in jobs for seed in job.seeds], size)
        generators = [
            torch.Generator(device="cpu").manual_seed(seed if i < count else 0) for i, seed in enumerate(seeds)
        ]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "generator": generators,
            "output_type": "pt",
        }
        if "width" in accepted:
            kwargs.update(width=first.width, height=first.height)
        set_vae_slicing(pipe, size * first.width * first.height, self.vae_slicing_pixels)
        source = jobs[0].source
        if source is not None:
            kwargs["image"] = padded([job.source.image for job in jobs if job.source for _ in job.seeds], size)
            kwargs["strength"] = source.strength
            kwargs["num_inference_steps"] = steps_for_strength(first.steps, source.strength)
            if source.mask is not None:
                masks = [job.source.mask for job in jobs if job.source for _ in job.seeds]
                kwargs["mask_image"] = padded(masks, size)
        # All-empty negatives are left out: SDXL treats None (zeros) and "" (encoded) differently.
        if self._has_negative and any(negatives):
            kwargs["negative_prompt"] = negatives
        started = time.perf_counter()
        marks: list[Any] = []  # per-step timestamps: CUDA events on a GPU (no sync per step), else clock
        on_cuda = self._description.device == "cuda"
        emitter = (
            PreviewEmitter(jobs, self.previews, kwargs["num_inference_steps"])
            if self.previews is not None and PreviewEmitter.wanted(jobs)
            else None
        )
        timed = on_step is not None
        if (timed or emitter is not None) and "callback_on_step_end" in accepted:
            marks.append(step_mark(on_cuda))

            def _step(pipe: Any, step_index: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
                if emitter is not None:
                    emitter.after_step(pipe, step_index, callback_kwargs["latents"])
                marks.append(step_mark(on_cuda))
                return callback_kwargs

            kwargs["callback_on_step_end"] = _step
        with torch.inference_mode():
            images = output_images(pipe(**kwargs).images, count)
        self.last_preview_seconds = emitter.seconds if emitter is not None else 0.0
        if on_step is not None:
            if len(marks) > 1:
                for seconds in step_seconds_between(marks, on_cuda):
                    on_step(seconds)
            else:
                per_step = (time.perf_counter() - started) / max(1, first.steps)
                for _ in range(first.steps):
                    on_step(per_step)
        result: list[list[Image]] = []
        offset = 0
        for job in jobs:
            result.append(images[offset : offset + len(job.seeds)])
            offset += len(job.seeds)
        return result

    def _choose(self, pipe: Any, params: Any) -> None:
        """The batch's adapter set and scheduler (see the module docstring)."""
        choice = params.pipeline
        if self.adapters is not None:
            self.adapters.activate(choice.adapters)
        elif choice.adapters:
            raise RuntimeError("this model has no adapters")
        if self.schedulers is not None:
            scheduler = self.schedulers.get(choice.scheduler)
            if pipe.scheduler is not scheduler:
                pipe.scheduler = scheduler
        elif choice.scheduler is not None:
            raise RuntimeError("this model offers no scheduler choice")

    def flag_unsafe(self, images: list[Image]) -> list[bool]:
        return self.checker.flag(images) if self.checker is not None else [False] * len(images)

    def vram(self) -> tuple[int, int] | None:
        if self._description.device != "cuda":
            return None
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)

    def close(self) -> None:
        self.pipe = None
        self.pipes = {}
        self.adapters = self.schedulers = self.checker = None
        if self._description.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _quiet_progress_bars() -> None:
    """Loading bars are noise in a server's log."""
    try:
        diffusers_logging: Any = importlib.import_module("diffusers.utils.logging")
        transformers_logging: Any = importlib.import_module("transformers.utils.logging")
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_backend(settings: InferenceSettings) -> DiffusersBackend:
    """Load ``settings.model_dir`` offline; ModelLoadError with a clear message on any failure."""
    index = check_model_dir(settings.model_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    _quiet_progress_bars()
    device = resolve_device(settings.device)
    dtype_name = resolve_dtype(settings.dtype, device)
    cls = _pipeline_class(settings.pipeline)
    smoke_test = read_smoke_test_marker(settings.model_dir) is not None
    if smoke_test:
        log.warning("%s is the tiny smoke-test model: random weights, it makes noise, not pictures", settings.model_dir)
    dtype = getattr(torch, dtype_name)
    started = time.monotonic()
    log.info(
        "loading %s (%s) from %s on %s as %s",
        index["_class_name"],
        settings.pipeline,
        settings.model_dir,
        device,
        dtype_name,
    )
    with _LOAD_LOCK:
        overrides = load_components(settings.model_dir, index, settings.components, dtype)
        try:
            pipe = cls.from_pretrained(
                str(settings.model_dir),
                local_files_only=True,
                **{_dtype_kwarg(): dtype},
                **overrides,
                **pipeline_load_kwargs(index),
            )
            pipe = pipe.to(device)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the pipeline in {settings.model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        schedulers = configure_schedulers(pipe, settings.scheduler) if hasattr(pipe, "scheduler") else None
        adapters = load_adapters(pipe, settings.adapters)
        checker = load_checker(settings.safety, settings.model_dir, index, device=device, dtype=dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    applied = optimize_pipeline(pipe, device=device, compile=settings.compile, adapters=adapters is not None)
    log.info(
        "loaded %s in %.1fs%s",
        type(pipe).__name__,
        time.monotonic() - started,
        f" (speed-ups: {', '.join(applied)})" if applied else "",
    )
    compiled = settings.compile and device == "cuda"
    description = BackendDescription(
        pipeline_class=type(pipe).__name__,
        device=device,
        dtype=dtype_name,
        smoke_test=smoke_test,
        compiled=compiled,
        components=tuple(overrides),
    )
    return DiffusersBackend(
        pipe,
        description,
        previews=load_preview_decoder(settings.model_dir, pipe, device),
        adapters=adapters,
        schedulers=schedulers,
        checker=checker,
        buckets=batch_buckets(settings.max_batch_size) if compiled else (),
        vae_slicing_pixels=settings.vae_slicing_pixels,
    )
