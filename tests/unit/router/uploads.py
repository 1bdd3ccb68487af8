"""Images and multipart forms for router tests, made without Pillow (the router never decodes a pixel:
it checks images' structure, see kubediffusion.api.imageinput)."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any

import httpx

from kubediffusion.api.multipart import FormPart, encode_multipart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 16, height: int = 16, *, alpha: bool = False, noise: bool = False) -> bytes:
    """A valid PNG: all black (or all transparent), or random pixels (``noise``: it hardly compresses)."""
    channels = 4 if alpha else 3
    row = (lambda: os.urandom(width * channels)) if noise else (lambda: b"\x00" * (width * channels))
    rows = b"".join(b"\x00" + row() for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (tiny) data does not have: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00")) + _chunk(b"IEND", b"")


def jpeg(width: int = 16, height: int = 16) -> bytes:
    """A structurally valid baseline JPEG (frame header, one scan, EOI): enough for the router."""
    frame = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    scan = bytes([3]) + b"".join(bytes([i, 0]) for i in (1, 2, 3)) + b"\x00\x3f\x00"
    return (
        b"\xff\xd8"
        + b"\xff\xc0"
        + struct.pack(">H", len(frame) + 2)
        + frame
        + b"\xff\xda"
        + struct.pack(">H", len(scan) + 2)
        + scan
        + b"\x12\x34\xff\x00\x56"
        + b"\xff\xd9"
    )


def form(
    fields: dict[str, Any] | None = None, files: list[tuple[str, tuple[str, bytes, str]]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a multipart form, encoded as httpx (hence the openai client) encodes it."""
    data = {k: str(v) for k, v in (fields or {}).items()}
    if not files:  # httpx would send a form without files url-encoded
        body, content_type = encode_multipart([FormPart(k, v.encode()) for k, v in data.items()])
        return body, {"content-type": content_type}
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.read(), {"content-type": request.headers["content-type"]}


def image_file(
    data: bytes | None = None, name: str = "image", filename: str = "in.png"
) -> tuple[str, tuple[str, bytes, str]]:
    return name, (filename, data if data is not None else png(), "image/png")
