"""What the server needs from a model, as a small Protocol, so the app can be tested without torch.

``pipeline.DiffusersBackend`` is the real one; unit tests pass a fake. A backend is used from one
thread only (the batcher's worker), so it need not be thread-safe. A backend with an image safety
checker also has ``flag_unsafe`` (:class:`ImageChecking`), called in that thread after ``generate``.
The other engines (adapters in front of another engine, and the stub) are
:class:`kubediffusion.inference.engines.base.Engine`: they take the same ``ImageJob`` but answer
encoded images, and an edit reaches them as uploaded (``EditUpload``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from kubediffusion.api.edits import UploadedImage
from kubediffusion.api.schema import GenerationParams

if TYPE_CHECKING:
    from PIL.Image import Image

    from kubediffusion.inference.settings import InferenceSettings


TaskKind = Literal["txt2img", "img2img", "inpaint"]

PartialCallback = Callable[[int, int, "Image | bytes"], None]
"""Called in the worker thread with (image index within the job, partial index, preview image); the
preview may be smaller than the output (latent resolution): the receiver scales it. An engine that
makes encoded images passes the preview's bytes, already at the output size and format."""


@dataclass(frozen=True)
class EditInput:
    """The decoded input of an image-to-image or inpainting job, already at the output size: ``image``
    RGB; ``mask`` mode L, 255 where the image is repainted, or None (image-to-image)."""

    image: Image = field(compare=False)
    mask: Image | None = field(compare=False)
    strength: float

    @property
    def kind(self) -> TaskKind:
        return "img2img" if self.mask is None else "inpaint"


@dataclass(frozen=True)
class EditUpload:
    """The input of an edit for an engine that takes encoded images: the client's bytes, not decoded here.
    ``mask`` is the explicit mask (alpha 0 = repainted) or None (image-to-image)."""

    image: UploadedImage = field(compare=False)
    mask: UploadedImage | None = field(compare=False)
    strength: float

    @property
    def kind(self) -> TaskKind:
        return "img2img" if self.mask is None else "inpaint"


@dataclass(frozen=True)
class ImageJob:
    """One request's share of a batch: its parameters and one seed per image (``len(seeds) == params.n``);
    ``source`` for edits and variations (``upload`` instead for engines); ``on_partial`` for streamed
    requests that want partial images; ``passthrough``, for engines, OpenAI's own fields the client set
    (``quality``, ``user``, ...) that an OpenAI-compatible upstream can honour and the others ignore."""

    params: GenerationParams
    seeds: tuple[int, ...]
    source: EditInput | None = None
    on_partial: PartialCallback | None = field(default=None, compare=False)
    upload: EditUpload | None = None
    passthrough: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    @property
    def kind(self) -> TaskKind:
        if self.source is not None:
            return self.source.kind
        return "txt2img" if self.upload is None else self.upload.kind


@dataclass(frozen=True)
class BackendDescription:
    pipeline_class: str
    device: str
    dtype: str
    smoke_test: bool = False
    compiled: bool = False
    edit_kinds: tuple[TaskKind, ...] = ()  # image-to-image pipelines made from the loaded weights
    previews: str | None = None  # how partial images are decoded ("linear:sd", "taesd"), None: not at all
    safety_checker: str | None = None  # the class that flags images after decoding, None: no checker
    adapters: tuple[str, ...] = ()  # LoRA adapters loaded, by name
    scheduler: str | None = None  # the default scheduler's class
    components: tuple[str, ...] = ()  # components loaded in place of the pipeline's own


StepCallback = Callable[[float], None]
"""Called after each denoising step with the seconds that step took."""


class ImageBackend(Protocol):
    @property
    def description(self) -> BackendDescription: ...

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image]]:
        """One pipeline call for jobs sharing a batch key (so one task kind, strength and size); returns
        each job's images in seed order, and calls each job's ``on_partial`` as its previews are due."""
        ...

    def vram(self) -> tuple[int, int] | None:
        """(free, total) bytes of accelerator memory, or None on CPU."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ImageChecking(Protocol):
    def flag_unsafe(self, images: list[Image]) -> list[bool]:
        """One bool per image, True where the safety checker flags it (one device call for them all)."""
        ...


BackendLoader = Callable[["InferenceSettings"], ImageBackend]
"""Loads a backend (in the worker thread); raises ``ModelLoadError`` with a clear message on failure."""


class ModelLoadError(RuntimeError):
    """The model directory is missing, not a diffusers pipeline, or failed to load."""
