"""The stub engine: no torch, no model files, no upstream. Deterministic test patterns of any size.

A picture is diagonal stripes in two colours derived from the seed, the prompt and (for edits) the
input's bytes, with the word STUB in a white box in the middle, so nobody mistakes it for a model's
output. Same request, same seed: same bytes. It serves the whole contract: generations, edits and
variations (the input is hashed, not decoded), ``n`` (image ``i`` is seed ``s + i``), and streamed
partial images (the final picture faded towards grey, one step less faded per partial). It honours no
other field and refuses none: it exists to test clients and the serving path, not pictures. PNG only
(written by :mod:`.png`, no Pillow).
"""

from __future__ import annotations

import asyncio
import hashlib

from kubediffusion.inference.backend import BackendDescription, ImageJob
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.png import GLYPH_HEIGHT, RGB, encode_png, text_mask, text_width

LABEL = "STUB"
WHITE, INK = b"\xff\xff\xff", b"\x00\x00\x00"
CAPABILITIES = Capabilities(output_formats=frozenset({"png"}), partial_images=True)


def colours(seed: int, salt: bytes) -> tuple[RGB, RGB]:
    digest = hashlib.sha256(seed.to_bytes(8, "big") + salt).digest()
    first = (digest[0], digest[1], digest[2])
    return first, (255 - first[0], 255 - first[1], 255 - first[2])


def _faded(colour: RGB, shade: float) -> bytes:
    return bytes(round(128 + (channel - 128) * shade) for channel in colour)


def picture(width: int, height: int, seed: int, salt: bytes, *, shade: float = 1.0) -> bytes:
    """The stub's PNG for ``seed``; ``shade`` < 1 fades it towards grey (partial images)."""
    first, second = colours(seed, salt)
    stripe = max(2, min(width, height) // 8)
    period = 2 * stripe
    unit = _faded(first, shade) * stripe + _faded(second, shade) * stripe
    pattern = unit * (width // period + 2)
    box_rows, box_x, box_y = _label(width, height)
    rows = []
    for y in range(height):
        offset = (y % period) * 3
        row = pattern[offset : offset + width * 3]
        band = y - box_y
        if 0 <= band < len(box_rows):
            left, right = max(0, box_x), min(width, box_x + len(box_rows[band]) // 3)
            cut = box_rows[band][(left - box_x) * 3 : (right - box_x) * 3]
            row = row[: left * 3] + cut + row[right * 3 :]
        rows.append(row)
    return encode_png(width, height, rows)


def _label(width: int, height: int) -> tuple[list[bytes], int, int]:
    """The white box with STUB in ink, as rows, and its top-left corner (may be off the picture)."""
    scale = max(1, min(width // 2 // text_width(LABEL), height // 3 // GLYPH_HEIGHT))
    mask = text_mask(LABEL)
    box_width = (text_width(LABEL) + 2) * scale
    blank = WHITE * box_width
    rows = [blank] * scale
    for line in mask:
        ink = b"".join((INK if cell == "#" else WHITE) * scale for cell in line)
        rows += [WHITE * scale + ink + WHITE * scale] * scale
    rows += [blank] * scale
    return rows, (width - box_width) // 2, (height - len(rows)) // 2


def salt_of(job: ImageJob) -> bytes:
    salt = job.params.prompt.encode("utf-8", "surrogatepass")
    if job.upload is not None:
        salt += job.kind.encode() + hashlib.sha256(job.upload.image.data).digest()
    return salt


class StubEngine:
    """An ``Engine`` that draws; ``probe`` always succeeds."""

    def __init__(self) -> None:
        self._description = BackendDescription(
            pipeline_class="stub",
            device="cpu",
            dtype="none",
            smoke_test=True,
            edit_kinds=("img2img", "inpaint"),
            previews="stub",
        )

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        CAPABILITIES.check("stub", request)

    async def probe(self) -> None:
        return None

    async def generate(self, job: ImageJob) -> list[bytes]:
        return await asyncio.to_thread(self._draw, job)

    def _draw(self, job: ImageJob) -> list[bytes]:
        width, height, salt = job.params.width, job.params.height, salt_of(job)
        partials = job.params.partial_images if job.on_partial is not None else 0
        images = []
        for index, seed in enumerate(job.seeds):
            for partial in range(partials):
                preview = picture(width, height, seed, salt, shade=(partial + 1) / (partials + 1))
                job.on_partial(index, partial, preview)  # type: ignore[misc]
            images.append(picture(width, height, seed, salt))
        return images

    async def aclose(self) -> None:
        return None
