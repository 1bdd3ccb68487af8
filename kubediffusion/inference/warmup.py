"""The warm-up before ``/readyz``, and what a compiled pipeline needs around it.

Shapes warmed, at the default size with a few steps: on CUDA every batch bucket (:mod:`.shapes`): a
compiled pipeline pads every batch to one, so no live request compiles; an eager one does not pad, but
cuDNN's autotuning (per shape, on first sight) then has the common sizes done. On CPU one image. On
CUDA each at the default guidance and on the other side of 1 too: a request may set either, and
without classifier-free guidance (≤ 1) the denoiser sees half the batch, another shape. Each warm-up
batch is also encoded and, with a checker, checked once (their first calls are slow too).

A compiled pipeline's warm-up sits between loading and saving its compile cache, and is followed by
freezing its shapes (:mod:`.compilecache`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import BackendDescription, ImageBackend, ImageJob
from kubediffusion.inference.shapes import batch_buckets

log = logging.getLogger(__name__)

WARMUP_MAX_STEPS = 2
OTHER_GUIDANCE = {False: 5.0, True: 0.0}  # by "the default uses CFG": a guidance on the other side of 1


def warm_sizes(description: BackendDescription, max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes the warm-up runs (see the module docstring)."""
    return batch_buckets(max_batch_size) if description.device == "cuda" else (1,)


def warm_guidances(description: BackendDescription, default: float) -> tuple[float, ...]:
    """The guidance values the warm-up runs: with and without CFG on CUDA (see the module docstring)."""
    if description.device != "cuda":
        return (default,)
    return (default, OTHER_GUIDANCE[default > 1])


def warm_up(
    backend: ImageBackend,
    defaults: GenerationDefaults,
    sizes: tuple[int, ...],
    guidances: tuple[float, ...] = (),
    *,
    encode: Callable[[Any], object],
    checker: Callable[[list[Any]], list[bool]] | None,
) -> None:
    """In the worker thread: one batch of each size at the default size and a few steps."""
    width, height = defaults.width_height
    params = GenerationParams(
        prompt="warm-up",
        negative_prompt="",
        n=1,
        width=width,
        height=height,
        steps=min(defaults.steps, WARMUP_MAX_STEPS),
        guidance=defaults.guidance,
        seed=0,
        output_format="png",
        output_compression=100,
    )
    for guidance, n in ((guidance, n) for guidance in guidances or (defaults.guidance,) for n in sizes):
        job = ImageJob(params=dataclasses.replace(params, n=n, guidance=guidance), seeds=tuple(range(n)))
        started = time.monotonic()
        images = backend.generate([job])
        if len(images) != 1 or len(images[0]) != n:
            raise RuntimeError(f"warm-up returned {len(images[0]) if images else 0} images, expected {n}")
        encode(images[0][0])
        if checker is not None:
            checker(images[0][:1])
        took = time.monotonic() - started
        log.info("warm-up batch of %d at %dx%d, guidance %g, took %.2fs", n, width, height, guidance, took)
