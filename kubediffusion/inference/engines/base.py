"""What an engine is to the server: the ``Engine`` Protocol, what a request asks of it, what it refuses.

An engine takes the server's ``ImageJob`` (one request's parameters and seeds, after our validation,
defaults, limits and batching) and answers that job's images already encoded, in the request's
``output_format``: an adapter passes on what its upstream made, so nothing here decodes an image (no
Pillow on this path). The server checks what comes back (:mod:`.runner`). Before a request is queued
its engine sees what the client set (:class:`EngineRequest`) and refuses, with a 400 naming the field,
anything it cannot honour: a field is never dropped silently. Values that ask for nothing
(``negative_prompt: ""``, ``partial_images: 0``) are not refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from kubediffusion.api.edits import DEFAULT_STRENGTH, EditParams, EditRequest, EditSource
from kubediffusion.api.limits import StylePreset
from kubediffusion.api.schema import ImageGenerationRequest
from kubediffusion.inference.backend import BackendDescription, EditUpload, ImageJob
from kubediffusion.inference.engines.errors import unsupported

Task = Literal["generation", "edit", "variation"]
_NEUTRAL: dict[str, Any] = {"negative_prompt": "", "partial_images": 0, "stream": False}
# OpenAI's own fields, and our extensions, an adapter may forward upstream when the client set them.
PASSTHROUGH_FIELDS = (
    "quality",
    "style",
    "background",
    "moderation",
    "user",
    "output_format",
    "output_compression",
    "negative_prompt",
    "num_inference_steps",
    "guidance_scale",
    "seed",
)


@dataclass(frozen=True)
class EngineRequest:
    """The fields the client set (non-null), before defaults; for edits, what the images carry."""

    task: Task
    fields: Mapping[str, Any]
    mask: bool = False
    alpha_without_mask: bool = False  # an input image has an alpha channel and no mask was sent

    @classmethod
    def of_generation(cls, request: ImageGenerationRequest) -> EngineRequest:
        return cls("generation", request.model_dump(exclude_none=True))

    @classmethod
    def of_edit(cls, request: EditRequest) -> EngineRequest:
        return cls(
            request.task,
            request.fields.model_dump(exclude_none=True),
            mask=request.mask is not None,
            alpha_without_mask=request.mask is None and any(image.info.has_alpha for image in request.images),
        )

    def sets(self, name: str) -> bool:
        """The client set ``name`` to a value that asks for something."""
        return name in self.fields and self.fields[name] != _NEUTRAL.get(name, object())

    def passthrough(self, presets: Mapping[str, StylePreset]) -> tuple[tuple[str, Any], ...]:
        """The fields an adapter may forward (``ImageJob.passthrough``); a ``style`` naming one of our
        presets was ours to apply, and is not forwarded."""
        skip = "style" if self.fields.get("style") in presets else None
        return tuple((name, self.fields[name]) for name in PASSTHROUGH_FIELDS if name in self.fields and name != skip)


def upload_of(edit: EditParams, source: EditSource) -> EditUpload:
    """An edit's input as sent, for an engine: only an explicit mask makes it inpainting (no decoder)."""
    kind = "inpaint" if source.mask is not None else edit.task
    strength = edit.strength if edit.strength is not None else DEFAULT_STRENGTH[kind]
    return EditUpload(image=source.image, mask=source.mask, strength=strength)


@dataclass(frozen=True)
class Capabilities:
    """What an engine does with the request's fields. ``refused`` maps a field to why it cannot."""

    output_formats: frozenset[str] = frozenset({"png"})
    partial_images: bool = False
    refused: Mapping[str, str] = field(default_factory=dict)

    def check(self, engine: str, request: EngineRequest) -> None:
        fmt = request.fields.get("output_format")
        if fmt is not None and fmt not in self.output_formats:
            formats = " or ".join(sorted(self.output_formats))
            raise unsupported(
                "output_format", f"The {engine} engine makes {formats} images; output_format '{fmt}' is not available."
            )
        if request.sets("partial_images") and not self.partial_images:
            raise unsupported(
                "partial_images",
                f"The {engine} engine makes no partial images: stream with partial_images 0 (or none).",
            )
        for name, why in self.refused.items():
            if request.sets(name):
                raise unsupported(name, f"The {engine} engine cannot honour '{name}': {why}")


class Engine(Protocol):
    """A maker of encoded images. Used from the event loop; ``generate`` may run several jobs at once."""

    @property
    def description(self) -> BackendDescription: ...

    def check(self, request: EngineRequest) -> None:
        """Raise a 400 naming the first field the client set that this engine cannot honour."""
        ...

    async def probe(self) -> None:
        """Raise ``UpstreamNotReady`` unless the engine is up (its health check; the model it needs)."""
        ...

    async def generate(self, job: ImageJob) -> list[bytes]:
        """The job's images in seed order, encoded in ``job.params.output_format``, of its size."""
        ...

    async def aclose(self) -> None: ...
