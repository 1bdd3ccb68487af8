"""Uploaded images checked from their bytes without decoding: format by signature, dimensions before
anything else (bombs), the structure walked (truncation, corruption), alpha for masks, per-model ceilings."""

from __future__ import annotations

import io
import os
import struct
import time

import pytest
from PIL import Image

from kubediffusion.api.errors import APIError
from kubediffusion.api.imageinput import ImageInfo, ImageInputLimits, input_limits, sniff_image
from kubediffusion.api.limits import GenerationLimits
from tests.unit.api.sample_images import image_file, png_chunk, png_claiming

HOLE = (0, 0, 4, 4)
VARIANTS: list[tuple[str, bytes, ImageInfo]] = [
    ("png rgb", image_file((37, 21), "PNG"), ImageInfo("png", 37, 21, False)),
    ("png interlaced", image_file((37, 21), "PNG", interlace=1), ImageInfo("png", 37, 21, False)),
    ("png rgba", image_file((37, 21), "PNG", mode="RGBA"), ImageInfo("png", 37, 21, True)),
    ("png grey+alpha", image_file((5, 6), "PNG", mode="LA", colour=(1, 2)), ImageInfo("png", 5, 6, True)),
    ("png palette", image_file((5, 6), "PNG", mode="P", colour=(3,)), ImageInfo("png", 5, 6, False)),
    (
        "png palette+tRNS",
        image_file((5, 6), "PNG", mode="P", colour=(3,), transparency=3),
        ImageInfo("png", 5, 6, True),
    ),
    ("png 16-bit grey", image_file((5, 6), "PNG", mode="I;16", colour=(9,)), ImageInfo("png", 5, 6, False)),
    ("jpeg baseline", image_file((37, 21), "JPEG"), ImageInfo("jpeg", 37, 21, False)),
    ("jpeg progressive", image_file((37, 21), "JPEG", progressive=True), ImageInfo("jpeg", 37, 21, False)),
    ("jpeg grey", image_file((37, 21), "JPEG", mode="L", colour=(5,)), ImageInfo("jpeg", 37, 21, False)),
    ("jpeg cmyk", image_file((8, 8), "JPEG", mode="CMYK", colour=(1, 2, 3, 4)), ImageInfo("jpeg", 8, 8, False)),
    ("webp lossy", image_file((37, 21), "WEBP"), ImageInfo("webp", 37, 21, False)),
    ("webp lossless", image_file((37, 21), "WEBP", lossless=True), ImageInfo("webp", 37, 21, False)),
    ("webp lossy+alpha", image_file((37, 21), "WEBP", mode="RGBA", hole=HOLE), ImageInfo("webp", 37, 21, True)),
    (
        "webp lossless+alpha",
        image_file((37, 21), "WEBP", mode="RGBA", hole=HOLE, lossless=True),
        ImageInfo("webp", 37, 21, True),
    ),
]


@pytest.mark.parametrize(("data", "info"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_formats_dimensions_and_alpha_are_read_from_the_bytes(data: bytes, info: ImageInfo) -> None:
    assert sniff_image(data, "image") == info


@pytest.mark.parametrize(("data", "info"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_every_truncation_is_refused(data: bytes, info: ImageInfo) -> None:
    for cut in sorted({1, 4, 8, 12, 16, 20, 30, len(data) // 3, len(data) // 2, len(data) - 2, len(data) - 1}):
        with pytest.raises(APIError) as caught:
            sniff_image(data[:cut], "image")
        assert caught.value.param == "image" and caught.value.code in ("invalid_image", "invalid_image_format"), cut


def code_of(data: bytes, param: str = "image", limits: ImageInputLimits | None = None) -> str | None:
    with pytest.raises(APIError) as caught:
        sniff_image(data, param, limits)
    assert caught.value.status_code == 400 and caught.value.param == param
    return caught.value.code


def test_not_an_image_by_its_bytes_whatever_it_is_called() -> None:
    for data in (b"", b"GIF89a" + b"\0" * 40, b"BM" + b"\0" * 60, b"<svg/>", os.urandom(64), b"\x89PNX\r\n\x1a\n"):
        assert code_of(data) == "invalid_image_format"
    assert code_of(image_file((8, 8), "GIF")) == "invalid_image_format"


def test_decompression_bombs_are_refused_from_the_header_alone() -> None:
    started = time.perf_counter()
    assert code_of(png_claiming(100_000, 100_000)) == "image_too_large"
    assert code_of(png_claiming(20_000, 10)) == "image_too_large"  # one side past the ceiling
    jpeg = bytearray(image_file((8, 8), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    assert code_of(bytes(jpeg)) == "image_too_large"
    webp = bytearray(image_file((8, 8), "WEBP", lossless=True))
    bits = struct.unpack_from("<I", webp, 21)[0] | 0x3FFF | (0x3FFF << 14)
    struct.pack_into("<I", webp, 21, bits)
    assert code_of(bytes(webp), limits=ImageInputLimits(max_side=8192)) == "image_too_large"
    assert time.perf_counter() - started < 1


def test_corruption_is_refused() -> None:
    data = bytearray(image_file((16, 16), "PNG"))
    data[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert code_of(bytes(data)) == "invalid_image"
    no_idat = png_claiming(4, 4).replace(b"IDAT", b"tEXt")
    assert code_of(no_idat) == "invalid_image"
    two_headers = png_claiming(4, 4)
    assert code_of(two_headers[:8] + png_chunk(b"tEXt", b"a") + two_headers[8:]) == "invalid_image"
    # A JPEG whose header "lies": the JPEG signature, then no frame header and no scan.
    assert code_of(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 9 + b"\xff\xd9") == "invalid_image"
    assert code_of(b"\xff\xd8\xff" + os.urandom(200)) == "invalid_image"
    riff = bytearray(image_file((8, 8), "WEBP"))
    struct.pack_into("<I", riff, 4, len(riff) * 2)
    assert code_of(bytes(riff)) == "invalid_image"


def test_animated_webp_is_refused() -> None:
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:])
    assert code_of(buffer.getvalue()) == "unsupported_image"


def test_per_model_ceilings_follow_the_models_largest_size() -> None:
    small = input_limits(GenerationLimits(min_size=64, max_size=256))
    assert (small.max_side, small.max_pixels) == (1024, 8 * 256 * 256)
    assert small.max_bytes == 8 * small.max_pixels + 65536
    big = input_limits(GenerationLimits(min_size=64, max_size=16384))
    assert (big.max_side, big.max_pixels, big.max_bytes) == (16384, 16384 * 16384, 50 * 1024 * 1024)
    assert code_of(png_claiming(800, 800), "mask", small) == "image_too_large"  # 640000 > 524288 pixels
    assert sniff_image(image_file((1024, 8), "PNG"), "image", small).width == 1024


def test_a_large_noisy_jpeg_is_walked_quickly() -> None:
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=95)
    started = time.perf_counter()
    assert sniff_image(buffer.getvalue(), "image").width == 1024
    assert time.perf_counter() - started < 0.5
