"""The stub engine and its Pillow-free PNG writer: valid PNGs of any size, deterministic, seeded, marked."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.engines.png import encode_png
from kubediffusion.inference.engines.stub import StubEngine, colours, picture


def params(**overrides: object) -> GenerationParams:
    values: dict[str, object] = dict(
        prompt="a cat",
        negative_prompt="",
        n=1,
        width=64,
        height=48,
        steps=2,
        guidance=0.0,
        seed=1,
        output_format="png",
        output_compression=100,
    )
    values.update(overrides)
    return GenerationParams(**values)  # type: ignore[arg-type]


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # checks every chunk's CRC and the deflate stream
    return image


def test_the_encoder_writes_the_pixels_it_is_given() -> None:
    rows = [bytes([x, y, 200]) * 1 for y in range(3) for x in range(1)]
    image = decoded(encode_png(1, 3, rows))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (1, 3))
    assert [image.getpixel((0, y)) for y in range(3)] == [(0, 0, 200), (0, 1, 200), (0, 2, 200)]
    assert zlib.crc32(b"IEND") == int.from_bytes(encode_png(1, 1, [b"\0\0\0"])[-4:], "big")


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (64, 48), (1024, 1024), (1536, 640)])
def test_pictures_have_the_requested_size(size: tuple[int, int]) -> None:
    assert decoded(picture(*size, seed=3, salt=b"x")).size == size


def test_pictures_are_deterministic_and_depend_on_seed_and_prompt() -> None:
    assert picture(64, 64, 5, b"a") == picture(64, 64, 5, b"a")
    assert len({picture(64, 64, 5, b"a"), picture(64, 64, 6, b"a"), picture(64, 64, 5, b"b")}) == 3


def test_the_stub_is_marked_with_a_white_box_and_stripes_in_the_seeds_colours() -> None:
    image = decoded(picture(256, 128, 9, b"p")).convert("RGB")
    first, second = colours(9, b"p")
    assert image.getpixel((128, 64 - 20)) == (255, 255, 255)  # inside the STUB label's box
    assert {image.getpixel((0, 0)), image.getpixel((0, 16))} == {first, second}  # stripes 16 px wide
    ink = sum(1 for x in range(80, 176) for y in range(50, 78) if image.getpixel((x, y)) == (0, 0, 0))
    assert ink > 100  # the letters


async def test_a_job_gives_n_images_seed_by_seed_and_partials_fade_to_the_image() -> None:
    partials: list[tuple[int, int, bytes]] = []
    engine = StubEngine()
    job = ImageJob(
        params=params(n=2, partial_images=2, stream=True),
        seeds=(4, 5),
        on_partial=lambda image, index, preview: partials.append((image, index, preview)),  # type: ignore[arg-type]
    )
    first, second = await engine.generate(job)
    alone = await engine.generate(ImageJob(params=params(), seeds=(5,)))
    assert second == alone[0] and first != second
    assert [(image, index) for image, index, _ in partials] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(decoded(preview).size == (64, 48) for _, _, preview in partials)
    assert partials[0][2] != partials[1][2] != first
    assert engine.description.smoke_test and engine.description.previews == "stub"
