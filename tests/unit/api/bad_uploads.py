"""A table of bad edit/variation uploads, each with the 4xx and ``param`` it must get (api and app tests).

``stage`` says who can refuse it: ``"api"`` (the shared parser/resolver, so the router refuses it and no
pod sees it), ``"decode"`` (only decoding the pixels finds it: the pod refuses it before queueing), or
``"app"`` (the server's own checks: model name, body limit). Limits assumed: a model with sizes 64-256,
at most 4 images, 50 steps (``LIMITS``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits
from tests.unit.api.sample_images import form, image_file, mask_png, png, png_chunk, png_claiming

LIMITS = GenerationLimits(min_size=64, max_size=256, max_n=4, max_steps=50)
DEFAULTS = GenerationDefaults(size="64x64", steps=2)
UPLOAD_LIMIT = 8 * 1024 * 1024  # the app tests' max_upload_bytes: one case is over it, every other under it
EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"


@dataclass(frozen=True)
class BadUpload:
    case: str
    path: str
    body: bytes
    content_type: str | None
    status: int
    param: str | None
    code: str | None = None
    stage: str = "api"


def _edit(fields: dict[str, str] | None = None, images: list[tuple[str, bytes]] | None = None) -> tuple[bytes, str]:
    return form({"prompt": "a barn", **(fields or {})}, [("image", png())] if images is None else images)


def _corrupt_deflate_png() -> bytes:
    """Valid chunks and CRCs around pixel data that does not inflate: only a decoder finds it."""
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    garbage = b"\x78\x9c" + bytes(range(7, 250))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", garbage) + png_chunk(b"IEND", b"")


def _oversized_png() -> bytes:
    """A valid 64x64 PNG carrying 5 MB of text: over the per-model file limit (4.25 MB at max size 256)."""
    data = png()
    text = png_chunk(b"tEXt", b"k\x00" + b"v" * (5 * 1024 * 1024))
    return data[:-12] + text + data[-12:]


def _cases() -> list[BadUpload]:
    def edit(case: str, status: int, param: str | None, code: str | None, stage: str = "api", **kw: object) -> None:
        body, content_type = _edit(**kw)  # type: ignore[arg-type]
        cases.append(BadUpload(case, EDITS, body, content_type, status, param, code, stage))

    cases: list[BadUpload] = []
    edit("not an image", 400, "image", "invalid_image_format", images=[("image", b"hello, I am a PNG")])
    edit("GIF image", 400, "image", "invalid_image_format", images=[("image", image_file((8, 8), "GIF"))])
    edit("truncated PNG", 400, "image", "invalid_image", images=[("image", png()[:-20])])
    edit("PNG with a bad CRC", 400, "image", "invalid_image", images=[("image", png()[:40] + b"\0" + png()[41:])])
    edit("JPEG with a lying header", 400, "image", "invalid_image", images=[("image", b"\xff\xd8\xff" + b"\1" * 64)])
    edit("truncated JPEG", 400, "image", "invalid_image", images=[("image", image_file((64, 64), "JPEG")[:-30])])
    edit("animated WebP", 400, "image", "unsupported_image", images=[("image", _animated_webp())])
    edit("bomb dimensions", 400, "image", "image_too_large", images=[("image", png_claiming(100_000, 100_000))])
    edit("over the model's pixels", 400, "image", "image_too_large", images=[("image", png_claiming(2000, 2000))])
    edit("over the model's file size", 400, "image", "image_too_large", images=[("image", _oversized_png())])
    edit("missing image", 400, "image", "missing_required_parameter", images=[])
    edit("17 images", 400, "image", "too_many_images", images=[("image[]", png())] * 17)
    edit(
        "mask of another size",
        400,
        "mask",
        "mask_size_mismatch",
        images=[("image", png()), ("mask", mask_png((64, 72)))],
    )
    edit("mask without alpha", 400, "mask", "mask_without_alpha", images=[("image", png()), ("mask", png())])
    jpeg_mask = image_file((64, 64), "JPEG")
    edit("JPEG mask", 400, "mask", "mask_without_alpha", images=[("image", png()), ("mask", jpeg_mask)])
    edit(
        "two masks",
        400,
        "mask",
        "duplicate_parameter",
        images=[("image", png()), ("mask", mask_png()), ("mask", mask_png())],
    )
    edit("unknown field", 400, "foo", "unknown_parameter", fields={"foo": "1"})
    edit("n zero", 400, "n", None, fields={"n": "0"})
    edit("n not an integer", 400, "n", "invalid_value", fields={"n": "two"})
    edit(
        "n times images over maxN",
        400,
        "n",
        "integer_above_max_value",
        fields={"n": "3"},
        images=[("image[]", png())] * 2,
    )
    edit("size not WxH", 400, "size", None, fields={"size": "big"})
    edit("size above the model's limit", 400, "size", "invalid_value", fields={"size": "512x512"})
    edit("strength zero", 400, "strength", None, fields={"strength": "0"})
    edit("strength above 1", 400, "strength", None, fields={"strength": "1.5"})
    edit("strength NaN", 400, "strength", "invalid_value", fields={"strength": "nan"})
    edit("steps above the model's max", 400, "num_inference_steps", None, fields={"num_inference_steps": "51"})
    edit("negative seed", 400, "seed", None, fields={"seed": "-1"})
    edit("partial_images 4", 400, "partial_images", None, fields={"stream": "true", "partial_images": "4"})
    edit("stream not a boolean", 400, "stream", "invalid_value", fields={"stream": "maybe"})
    edit("transparent background", 400, "background", "unsupported_value", fields={"background": "transparent"})
    edit("blank prompt", 400, "prompt", None, fields={"prompt": "  "})
    edit(
        "prompt larger than a text part may be",
        400,
        "prompt",
        "string_above_max_length",
        fields={"prompt": "p" * 140_000},
    )
    body, content_type = form({"n": "1"}, [("image", png())])
    cases.append(BadUpload("missing prompt", EDITS, body, content_type, 400, "prompt", "missing_required_parameter"))
    body, content_type = _edit()
    latin = body.replace(b"a barn", b"a \xff barn")
    cases.append(BadUpload("prompt not UTF-8", EDITS, latin, content_type, 400, "prompt", "invalid_value"))
    twice = form({"prompt": "a"}, [("image", png()), ("prompt", b"b")])
    cases.append(BadUpload("duplicate prompt", EDITS, *twice, 400, "prompt", "duplicate_parameter"))
    body, content_type = _edit()
    cases.append(BadUpload("wrong content type", EDITS, body, "application/json", 400, None, "unsupported_media_type"))
    cases.append(BadUpload("no boundary", EDITS, body, "multipart/form-data", 400, None, "invalid_multipart"))
    cases.append(BadUpload("truncated body", EDITS, body[:-40], content_type, 400, None, "invalid_multipart"))
    many = form({f"x{i}": "1" for i in range(70)}, [("image", png())])
    cases.append(BadUpload("too many parts", EDITS, *many, 400, None, "too_many_parts"))
    variation = form({}, [("image", png()), ("image", png())])
    cases.append(BadUpload("variation of two images", VARIATIONS, *variation, 400, "image", "too_many_images"))
    streamed = form({"stream": "true"}, [("image", png())])
    cases.append(BadUpload("stream on a variation", VARIATIONS, *streamed, 400, "stream", "unknown_parameter"))
    prompted = form({"prompt": "a"}, [("image", png())])
    cases.append(BadUpload("prompt on a variation", VARIATIONS, *prompted, 400, "prompt", "unknown_parameter"))
    # Found only by decoding the pixels: the pod refuses them before anything is queued.
    edit(
        "PNG whose data does not inflate",
        400,
        "image",
        "invalid_image",
        "decode",
        images=[("image", _corrupt_deflate_png())],
    )
    opaque = image_file((64, 64), "PNG", mode="RGBA", colour=(0, 0, 0, 255))
    edit(
        "mask with nothing transparent",
        400,
        "mask",
        "invalid_mask",
        "decode",
        images=[("image", png()), ("mask", opaque)],
    )
    # The server's own: the model it serves, its body limit.
    edit("unknown model", 404, "model", "model_not_found", "app", fields={"model": "nope"})
    huge = b"\x89PNG" + b"x" * (UPLOAD_LIMIT + 1)
    edit("body over the upload limit", 413, None, "request_too_large", "app", images=[("image", huge)])
    return cases


def _animated_webp() -> bytes:
    import io

    from PIL import Image

    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


BAD_UPLOADS = _cases()
assert len(BAD_UPLOADS) >= 25 and len({case.case for case in BAD_UPLOADS}) == len(BAD_UPLOADS)
