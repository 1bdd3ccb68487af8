"""A PNG encoder in zlib and struct (no Pillow), and a 5x7 bitmap font, for the stub engine's pictures.

Images are 8-bit RGB, one filter byte (0, none) per row, compressed at zlib level 6: deterministic
bytes for the same pixels. Rows are built as ``bytes`` slices of a repeating pattern, so a 1024x1024
picture takes milliseconds, not a Python loop per pixel.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB = tuple[int, int, int]

# 5 columns x 7 rows per glyph, one string per row ("#" = ink).
GLYPHS: dict[str, tuple[str, ...]] = {
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
}
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rows: Iterable[bytes], *, level: int = 6) -> bytes:
    """``rows``: ``height`` rows of ``3 * width`` bytes (RGB)."""
    compressor = zlib.compressobj(level)
    parts = [compressor.compress(b"\x00" + row) for row in rows]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def text_mask(text: str) -> list[str]:
    """The text's pixels as rows of "#"/" ", one blank column between glyphs."""
    return [" ".join(GLYPHS[char][row] for char in text) for row in range(GLYPH_HEIGHT)]


def text_width(text: str) -> int:
    return len(text) * (GLYPH_WIDTH + 1) - 1
