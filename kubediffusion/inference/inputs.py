"""Uploaded images -> the pipeline's inputs: decoded, checked, resized, the mask derived (in the pod).

:mod:`kubediffusion.api.imageinput` already refused what a header walk can find (format, dimensions,
truncation) before this runs, so the decoder only ever sees files whose dimensions fit the model. What
only decoding finds (a bad deflate stream, broken JPEG entropy data, a header that disagrees with the
decoder) is a 400 naming the param here, before the request is queued: nothing that fails to decode
reaches the batcher.

The mask (OpenAI's rule): pixels whose alpha is 0 are repainted; the explicit ``mask`` of the first
image, else an image's own alpha channel. An image with no fully transparent pixel, and no explicit
mask, is edited whole (image-to-image); an explicit mask with nothing transparent is a 400 (there would
be nothing to edit). A variation is always image-to-image: its image's alpha is dropped. Images are
resized to the output size (Lanczos; the mask nearest-neighbour, so it stays binary).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from kubediffusion.api.edits import DEFAULT_STRENGTH, EditParams, EditSource, UploadedImage
from kubediffusion.api.errors import InvalidRequestError
from kubediffusion.inference.backend import EditInput

if TYPE_CHECKING:
    from PIL.Image import Image

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _broken(upload: UploadedImage, detail: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{upload.param}': the image could not be decoded ({detail}).",
        param=upload.param,
        code="invalid_image",
    )


def decode(upload: UploadedImage) -> Image:
    """The upload's pixels, fully loaded; a 400 naming its param when they cannot be."""
    from PIL import Image as PILImage

    info = upload.info
    try:
        image = PILImage.open(io.BytesIO(upload.data), formats=[_PIL_FORMATS[info.format]])
        if image.size != (info.width, info.height):
            raise _broken(upload, f"its header says {info.width}x{info.height}, the decoder {image.size}")
        image.load()  # a truncated file raises here (PIL's LOAD_TRUNCATED_IMAGES stays off)
    except InvalidRequestError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for broken files
        raise _broken(upload, f"{type(exc).__name__}: {exc}") from None
    return image


def repaint_mask(image: Image) -> Image | None:
    """Mode L, 255 where alpha is 0; None when the image has no alpha or no fully transparent pixel."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda value: 255 if value == 0 else 0)
    return mask if mask.getbbox() is not None else None


def prepare(source: EditSource, task: str, strength: float | None) -> EditInput:
    """One source of an edit as the pipeline wants it (in a thread: decoding takes milliseconds)."""
    from PIL import Image as PILImage

    image = decode(source.image)
    if source.mask is not None:
        mask = repaint_mask(decode(source.mask))
        if mask is None:
            raise InvalidRequestError(
                "Invalid 'mask': it has no fully transparent pixels, so there is nothing to edit.",
                param="mask",
                code="invalid_mask",
            )
    else:
        mask = repaint_mask(image) if task == "edit" else None
    size = (source.width, source.height)
    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, PILImage.Resampling.LANCZOS)
    if mask is not None and mask.size != size:
        mask = mask.resize(size, PILImage.Resampling.NEAREST)
    kind = "inpaint" if mask is not None else task
    return EditInput(image=rgb, mask=mask, strength=strength if strength is not None else DEFAULT_STRENGTH[kind])


def prepare_all(edit: EditParams) -> list[EditInput]:
    return [prepare(source, edit.task, edit.strength) for source in edit.sources]
