"""The phases of one batch, timed in the worker thread for its spans (:mod:`.tracing`).

The pipeline call is one call (prompt encoding, denoising steps, VAE decode, conversion to images), so
it is split by its step times, which the backend reports anyway (the step-time metric): their sum is
``denoise``, the rest of the call ``decode``. On a GPU the steps are timed with CUDA events (no sync
per step), so this costs nothing. A backend that cannot report steps reports the call's time spread over
them: all of it is then ``denoise``. Phases go to the running batch (:data:`.requestctx.BATCH`); outside a
batch (warm-up) they are dropped.
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from kubediffusion.inference.requestctx import current_batch


class PhaseClock:
    def __init__(self, on_step: Callable[[float], None] | None = None) -> None:
        self.batch = current_batch()
        self._on_step = on_step
        self.step_seconds = 0.0
        self.mark = time.monotonic()

    def step(self, seconds: float) -> None:
        """The backend's step callback: counted here, and passed on."""
        self.step_seconds += seconds
        if self._on_step is not None:
            self._on_step(seconds)

    def generated(self) -> None:
        """After the pipeline call: ``denoise`` and ``decode`` (see the module docstring)."""
        now = time.monotonic()
        denoised = min(now, self.mark + self.step_seconds)
        self._record("denoise", self.mark, denoised)
        self._record("decode", denoised, now)
        self.mark = now

    def lap(self, name: str) -> None:
        """A phase from the end of the previous one to now."""
        now = time.monotonic()
        self._record(name, self.mark, now)
        self.mark = now

    def _record(self, name: str, start: float, end: float) -> None:
        if self.batch is not None:
            self.batch.phase(name, start, end)


def step_mark(on_cuda: bool) -> Any:
    """A per-step timestamp for the backend: a CUDA event on a GPU (no sync per step), else the clock."""
    if not on_cuda:
        return time.perf_counter()
    torch: Any = importlib.import_module("torch")
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def step_seconds_between(marks: list[Any], on_cuda: bool) -> list[float]:
    if not on_cuda:
        return [later - earlier for earlier, later in itertools.pairwise(marks)]
    marks[-1].synchronize()
    return [earlier.elapsed_time(later) / 1000 for earlier, later in itertools.pairwise(marks)]
