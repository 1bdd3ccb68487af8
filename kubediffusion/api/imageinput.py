"""Uploaded images checked from their bytes, without decoding a pixel (router and pods; no Pillow here).

:func:`sniff_image` tells PNG, JPEG and WebP apart by their signatures (never by filename or the
part's Content-Type), reads the dimensions from the header (PNG ``IHDR``, JPEG ``SOFn``, WebP
``VP8``/``VP8L``/``VP8X``) and checks them against a ceiling first, so a decompression bomb (a small
file claiming 100000x100000 pixels) is refused before anything is inflated. Then it walks the file's
structure: PNG chunks with their CRCs up to ``IEND``; JPEG segments up to ``EOI``; the WebP RIFF
chunks within the declared size. A truncated or corrupted file is refused here; what only a decoder
can find (a bad deflate stream behind valid CRCs) the pod's decoder finds, also as a 400.

``has_alpha`` says whether the file can carry transparency (PNG colour types 4/6 or a ``tRNS`` chunk;
WebP's alpha flag or lossless alpha bit); JPEG never does. A mask needs it.

Per-model ceilings (:func:`input_limits`) are derived from the model's ``GenerationLimits``: an
input is at most 4x the model's largest side and 8x its largest square's pixels (inputs are resized
to the output size, so larger ones only cost memory), and its file at most 8 bytes per allowed pixel.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from kubediffusion.api.errors import InvalidRequestError
from kubediffusion.api.limits import GenerationLimits

ImageFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[ImageFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

MAX_SIDE = 16384  # any model: larger headers are refused before anything else is read
MAX_INPUT_BYTES = 50 * 1024 * 1024  # OpenAI's own limit for one input image
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class ImageInfo:
    format: ImageFormat
    width: int
    height: int
    has_alpha: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class ImageInputLimits:
    """Ceilings for one input image of one model (see the module docstring)."""

    max_side: int = MAX_SIDE
    max_pixels: int = MAX_SIDE * MAX_SIDE
    max_bytes: int = MAX_INPUT_BYTES


def input_limits(limits: GenerationLimits) -> ImageInputLimits:
    max_pixels = min(MAX_SIDE * MAX_SIDE, 8 * limits.max_size * limits.max_size)
    return ImageInputLimits(
        max_side=min(MAX_SIDE, 4 * limits.max_size),
        max_pixels=max_pixels,
        max_bytes=min(MAX_INPUT_BYTES, 8 * max_pixels + 65536),
    )


class _Corrupt(Exception):
    """Raised inside the parsers; becomes a 400 naming the param."""


def _invalid(param: str, message: str, code: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': {message}", param=param, code=code)


def sniff_format(data: bytes) -> ImageFormat | None:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_dimensions(info: ImageInfo, param: str, limits: ImageInputLimits) -> None:
    if info.width > limits.max_side or info.height > limits.max_side or info.pixels > limits.max_pixels:
        raise _invalid(
            param,
            f"the image is {info.width}x{info.height}; at most {limits.max_side} pixels a side and "
            f"{limits.max_pixels} pixels in all for this model.",
            "image_too_large",
        )


def sniff_image(data: bytes, param: str, limits: ImageInputLimits | None = None) -> ImageInfo:
    """Format, dimensions and alpha of an uploaded image, or a 400 naming ``param`` (see the module)."""
    limits = limits or ImageInputLimits()
    if len(data) > limits.max_bytes:
        raise _invalid(param, f"the file is {len(data)} bytes; at most {limits.max_bytes}.", "image_too_large")
    image_format = sniff_format(data)
    if image_format is None:
        raise _invalid(
            param, "unsupported image format: the file must be a PNG, JPEG or WebP image.", "invalid_image_format"
        )
    walk = {"png": _walk_png, "jpeg": _walk_jpeg, "webp": _walk_webp}[image_format]
    try:
        return walk(data, param, limits)
    except (_Corrupt, struct.error, IndexError, ValueError) as exc:
        detail = f" ({exc})" if isinstance(exc, _Corrupt) else ""
        raise _invalid(
            param, f"the {image_format.upper()} file is truncated or corrupt{detail}.", "invalid_image"
        ) from None


def _walk_png(data: bytes, param: str, limits: ImageInputLimits) -> ImageInfo:
    position = len(PNG_SIGNATURE)
    info: ImageInfo | None = None
    colour = 0
    seen_idat = seen_plte = transparency = False
    while True:
        if position + 12 > len(data):
            raise _Corrupt("no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise _Corrupt(f"chunk {kind!r} runs past the end of the file")
        body = data[position + 8 : position + 8 + length]
        if info is None:
            if kind != b"IHDR" or length != 13:
                raise _Corrupt("the first chunk is not IHDR")
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if not width or not height or depth not in _PNG_DEPTHS.get(colour, ()):
                raise _Corrupt("invalid IHDR")
            if compression or filtering or interlace > 1:
                raise _Corrupt("invalid IHDR")
            info = ImageInfo("png", width, height, colour in (4, 6))
            check_dimensions(info, param, limits)  # before any other chunk is read
        if zlib.crc32(data[position + 4 : position + 8 + length]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _Corrupt(f"bad CRC in chunk {kind!r}")
        seen_idat = seen_idat or kind == b"IDAT"
        seen_plte = seen_plte or kind == b"PLTE"
        transparency = transparency or kind == b"tRNS"
        position = end
        if kind == b"IEND":
            break
    if info is None or not seen_idat or (colour == 3 and not seen_plte):
        raise _Corrupt("no image data")
    return ImageInfo("png", info.width, info.height, info.has_alpha or transparency)


def _walk_jpeg(data: bytes, param: str, limits: ImageInputLimits) -> ImageInfo:
    position = 2
    info: ImageInfo | None = None
    in_scan = False
    while True:
        if in_scan:  # entropy-coded data: skip to the next marker that is not a stuffed 0xFF00 or a restart
            position = data.index(b"\xff", position)
            if data[position + 1] == 0x00 or 0xD0 <= data[position + 1] <= 0xD7:
                position += 2
                continue
        if data[position] != 0xFF:
            raise _Corrupt("expected a marker")
        while data[position] == 0xFF:  # fill bytes
            position += 1
        marker = data[position]
        position += 1
        if marker == 0xD9:  # EOI
            break
        if marker in _JPEG_STANDALONE or marker == 0xD8:
            raise _Corrupt(f"unexpected marker 0x{marker:02X}")
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2 or position + length > len(data):
            raise _Corrupt(f"segment 0x{marker:02X} runs past the end of the file")
        if marker in _JPEG_SOF:
            if info is not None:
                raise _Corrupt("two frame headers")
            height, width, components = struct.unpack_from(">HHB", data, position + 3)
            if not width or not height or components not in (1, 3, 4):
                raise _Corrupt("invalid frame header")
            info = ImageInfo("jpeg", width, height, False)
            check_dimensions(info, param, limits)
        elif marker == 0xDA:  # SOS
            if info is None:
                raise _Corrupt("scan before the frame header")
            in_scan = True
        position += length
    if info is None or not in_scan:
        raise _Corrupt("no image data")
    return info


def _walk_webp(data: bytes, param: str, limits: ImageInputLimits) -> ImageInfo:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = riff_size + 8
    if end > len(data) or riff_size < 4:
        raise _Corrupt("the RIFF size runs past the end of the file")
    position = 12
    info: ImageInfo | None = None
    has_frame = False
    while position < end:
        kind, size = struct.unpack_from("<4sI", data, position)
        body = data[position + 8 : position + 8 + size]
        if position + 8 + size > end:
            raise _Corrupt(f"chunk {kind!r} runs past the end of the file")
        if kind == b"VP8X" and info is None and size >= 10:
            flags = body[0]
            if flags & 0x02:
                raise _invalid(param, "animated images are not supported.", "unsupported_image")
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
            info = ImageInfo("webp", width, height, bool(flags & 0x10))
            check_dimensions(info, param, limits)
        elif kind == b"VP8 ":
            if body[3:6] != b"\x9d\x01\x2a" or body[0] & 1:
                raise _Corrupt("invalid VP8 frame header")
            width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", body, 6))
            if info is None:
                info = ImageInfo("webp", width, height, False)
                check_dimensions(info, param, limits)
            has_frame = True
        elif kind == b"VP8L":
            if body[0] != 0x2F:
                raise _Corrupt("invalid VP8L signature")
            (bits,) = struct.unpack_from("<I", body, 1)
            if bits >> 29:
                raise _Corrupt("unknown VP8L version")
            if info is None:
                info = ImageInfo("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), bool(bits >> 28 & 1))
                check_dimensions(info, param, limits)
            has_frame = True
        position += 8 + size + (size & 1)
    if info is None or not has_frame or not info.width or not info.height:
        raise _Corrupt("no image data")
    return info
