"""What the server needs from a model, as a small Protocol, so the app can be tested without torch.

``pipeline.DiffusersBackend`` is the real one; unit tests pass a fake. A backend is used from one
thread only (the batcher's worker), so it need not be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kubediffusion.api.schema import GenerationParams

if TYPE_CHECKING:
    from PIL.Image import Image

    from kubediffusion.inference.settings import InferenceSettings


@dataclass(frozen=True)
class ImageJob:
    """One request's share of a batch: its parameters and one seed per image (``len(seeds) == params.n``)."""

    params: GenerationParams
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class BackendDescription:
    pipeline_class: str
    device: str
    dtype: str
    smoke_test: bool = False
    compiled: bool = False


StepCallback = Callable[[float], None]
"""Called after each denoising step with the seconds that step took."""


class ImageBackend(Protocol):
    @property
    def description(self) -> BackendDescription: ...

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image]]:
        """One pipeline call for jobs sharing a batch key; returns each job's images in seed order."""
        ...

    def vram(self) -> tuple[int, int] | None:
        """(free, total) bytes of accelerator memory, or None on CPU."""
        ...

    def close(self) -> None: ...


BackendLoader = Callable[["InferenceSettings"], ImageBackend]
"""Loads a backend (in the worker thread); raises ``ModelLoadError`` with a clear message on failure."""


class ModelLoadError(RuntimeError):
    """The model directory is missing, not a diffusers pipeline, or failed to load."""
