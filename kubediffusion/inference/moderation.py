"""What the server does with images the model's checker flags (the checker itself: :mod:`.safety`).

In the pipeline thread, right after a batch is generated: the images of the jobs that are moderated
(all of them, except requests with ``moderation: low`` where the model allows it) go to the checker in
one call; then, per the model's ``safety.action``:

* ``reject``: flagged images are left out of the answer, which says how many (``moderation`` in the
  response body). A request whose every image was flagged is a 400 ``moderation_blocked`` (OpenAI's code)
  instead (:meth:`JobImages.check`).
* ``blur``: flagged images are pixelated to 1/32 of each side and smoothed (:func:`obscure`): a blur of
  the image, never a black square, and the answer gives their indices.

Counted in ``kubediffusion_inference_flagged_images_total{action}``. A moderated streamed request gets no
partial images (a preview would show what the checker has not seen yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubediffusion.api.errors import ModerationBlockedError
from kubediffusion.inference.backend import ImageJob

if TYPE_CHECKING:
    from PIL.Image import Image

Action = Literal["reject", "blur"]
PIXELATE = 32  # each side shrinks by this factor


@dataclass(frozen=True)
class JobImages:
    """One job's answer (base64 images, in order) and what moderation did to it; also a whole request's."""

    images: list[str]
    flagged: int = 0
    blurred: tuple[int, ...] = ()  # indices into images

    @classmethod
    def merge(cls, results: Sequence[JobImages]) -> JobImages:
        images: list[str] = []
        blurred: list[int] = []
        for result in results:
            blurred += [len(images) + index for index in result.blurred]
            images += result.images
        return cls(images, sum(result.flagged for result in results), tuple(blurred))

    def check(self) -> JobImages:
        """Itself, or 400 ``moderation_blocked`` when the checker flagged every image (none is left)."""
        if self.flagged and not self.images:
            raise ModerationBlockedError("output")
        return self

    def echo(self, action: Action) -> dict[str, Any]:
        """The response's ``moderation`` field (see ``ModerationSummary``), only when something was flagged."""
        if not self.flagged:
            return {}
        summary: dict[str, Any] = {"action": action, "flagged": self.flagged}
        if action == "blur":
            summary["blurred"] = list(self.blurred)
        return {"moderation": summary}


def obscure(image: Image) -> Image:
    """Pixelated (1/32 of each side, box-averaged colours) and smoothed back to full size."""
    from PIL import Image as PILImage
    from PIL import ImageFilter

    width, height = image.size
    small = image.convert("RGB").resize(
        (max(1, width // PIXELATE), max(1, height // PIXELATE)), PILImage.Resampling.BOX
    )
    smooth = small.resize((width, height), PILImage.Resampling.BICUBIC)
    return smooth.filter(ImageFilter.GaussianBlur(radius=max(width, height) / PIXELATE))


@dataclass(frozen=True)
class Moderated:
    images: list[Image]
    flagged: int = 0
    blurred: tuple[int, ...] = ()


def moderated(job: ImageJob) -> bool:
    return job.params.pipeline.moderation != "low"


def moderate(
    jobs: Sequence[ImageJob],
    images: Sequence[Sequence[Image]],
    flag: Callable[[list[Image]], list[bool]] | None,
    action: Action,
) -> list[Moderated]:
    """Each job's images after the checker (``flag``: one call for the batch; None: no checker) and the action."""
    if flag is None:
        return [Moderated(list(batch)) for batch in images]
    checked = [image for job, batch in zip(jobs, images, strict=True) if moderated(job) for image in batch]
    flags = iter(flag(checked) if checked else [])
    results = []
    for job, batch in zip(jobs, images, strict=True):
        marks = [next(flags) for _ in batch] if moderated(job) else [False] * len(batch)
        if action == "reject":
            kept = [image for image, mark in zip(batch, marks, strict=True) if not mark]
            results.append(Moderated(kept, sum(marks)))
        else:
            shown = [obscure(image) if mark else image for image, mark in zip(batch, marks, strict=True)]
            results.append(Moderated(shown, sum(marks), tuple(i for i, mark in enumerate(marks) if mark)))
    return results
