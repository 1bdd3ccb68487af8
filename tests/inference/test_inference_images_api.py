"""The whole Images API of a real tiny-model server (uvicorn, real sockets), through the official ``openai``
client in strict mode: edits with and without a mask and with several images, variations, and the
streams of generations and edits (partial images, then the completed image)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import openai
from PIL import Image

from tests.inference.tinyserve import serve_http, tiny_settings
from tests.unit.api.sample_images import mask_png, png

pytestmark = [pytest.mark.inference, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def client(tiny_models: dict[str, Path]) -> Iterator[openai.OpenAI]:
    # 4 steps, so that partial_images=2 has two steps to come from; no warm-up (the first test is one).
    settings = tiny_settings(tiny_models["sd"], warmup=False, defaults={"size": "64x64", "steps": 4, "guidance": 5.0})
    with serve_http(settings) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)


def decoded(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_edit_without_mask_is_image_to_image(client: openai.OpenAI) -> None:
    result = client.images.edit(image=("in.png", png((64, 64))), prompt="a red barn", n=2, extra_body={"seed": 1})
    assert result.data is not None and len(result.data) == 2
    assert [decoded(item.b64_json).size for item in result.data] == [(64, 64), (64, 64)]
    assert result.output_format == "png"


def test_edit_with_a_mask_is_inpainting(client: openai.OpenAI) -> None:
    result = client.images.edit(
        image=("in.jpg", png((96, 64))),
        mask=("mask.png", mask_png((96, 64), hole=(0, 0, 48, 64))),
        prompt="a window",
        output_format="webp",
    )
    assert result.data is not None
    (image,) = (decoded(item.b64_json) for item in result.data)
    assert (image.format, image.size) == ("WEBP", (96, 64))


def test_edit_of_several_images_edits_each(client: openai.OpenAI) -> None:
    result = client.images.edit(
        image=[("a.png", png((64, 64))), ("b.png", png((128, 64), mode="RGBA", hole=(0, 0, 8, 8)))],
        prompt="the same scene at night",
    )
    assert result.data is not None
    assert [decoded(item.b64_json).size for item in result.data] == [(64, 64), (128, 64)]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks variations (dall-e-2) so
def test_create_variation(client: openai.OpenAI) -> None:
    result = client.images.create_variation(image=("in.png", png((64, 64))), n=2, response_format="b64_json")
    assert result.data is not None
    assert [decoded(item.b64_json).size for item in result.data] == [(64, 64), (64, 64)]


def check_stream(events: list[Any], prefix: str, partials: int) -> None:
    kinds = [event.type for event in events]
    assert kinds == [f"{prefix}.partial_image"] * partials + [f"{prefix}.completed"], kinds
    assert [event.partial_image_index for event in events[:-1]] == list(range(partials))
    for event in events:
        image = decoded(event.b64_json)
        assert (image.format, image.size) == ("PNG", (64, 64))
        assert (event.size, event.quality, event.background, event.output_format) == ("auto", "auto", "auto", "png")
    usage = events[-1].usage
    assert (usage.total_tokens, usage.input_tokens_details.image_tokens) == (0, 0)


def test_generate_stream_sends_partial_images_then_the_image(client: openai.OpenAI) -> None:
    stream = client.images.generate(prompt="a lighthouse", stream=True, partial_images=2)
    events = list(stream)
    check_stream(events, "image_generation", 2)
    # The completed image is the one the same request makes unstreamed.
    same = client.images.generate(prompt="a lighthouse", extra_body={"seed": 5})
    streamed_again = list(client.images.generate(prompt="a lighthouse", stream=True, extra_body={"seed": 5}))
    assert same.data is not None and streamed_again[-1].b64_json == same.data[0].b64_json


def test_edit_stream_sends_partial_images_then_the_image(client: openai.OpenAI) -> None:
    stream = client.images.edit(
        image=("in.png", png((64, 64))),
        prompt="a red barn",
        stream=True,
        partial_images=2,
        extra_body={"strength": 1.0},  # all 4 steps run, so both partial images have a step
    )
    check_stream(list(stream), "image_edit", 2)


def test_bad_upload_is_a_400_the_client_raises(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("in.png", b"not an image"), prompt="x")
    assert caught.value.code == "invalid_image_format" and caught.value.param == "image"
