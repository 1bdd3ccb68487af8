"""Image files for the edits tests, made with Pillow in memory; and multipart bodies around them."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

from PIL import Image

from kubediffusion.api.multipart import FormPart, encode_multipart


def image_file(
    size: tuple[int, int] = (64, 64),
    file_format: str = "PNG",
    *,
    mode: str = "RGB",
    colour: tuple[int, ...] = (200, 30, 30),
    hole: tuple[int, int, int, int] | None = None,
    **save: object,
) -> bytes:
    """A solid image; ``hole`` (x0, y0, x1, y1) is made fully transparent (modes with alpha)."""
    image = Image.new(mode, size, colour if mode != "RGBA" or len(colour) == 4 else (*colour, 255))
    if hole is not None:
        image.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **save)
    return buffer.getvalue()


def png(size: tuple[int, int] = (64, 64), **kwargs: object) -> bytes:
    return image_file(size, "PNG", **kwargs)  # type: ignore[arg-type]


def mask_png(size: tuple[int, int] = (64, 64), hole: tuple[int, int, int, int] = (0, 0, 16, 16)) -> bytes:
    """An RGBA mask, opaque but for ``hole`` (the region to repaint)."""
    return image_file(size, "PNG", mode="RGBA", colour=(0, 0, 0, 255), hole=hole)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, colour_type: int = 2) -> bytes:
    """A well-formed PNG header that claims ``width`` x ``height`` over a few bytes of data: a bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def form(
    fields: dict[str, str] | None = None,
    images: Sequence[tuple[str, bytes]] = (),
    *,
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """``(body, content_type)`` of a multipart form: text ``fields`` then ``images`` (name, bytes)."""
    parts = [FormPart(name, value.encode()) for name, value in (fields or {}).items()]
    parts += [FormPart(name, data, f"{name.strip('[]')}.bin", "application/octet-stream") for name, data in images]
    return encode_multipart(parts, boundary)
