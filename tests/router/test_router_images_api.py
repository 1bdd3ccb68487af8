"""The whole Images API through the router to real pods, with the official client in strict mode:
edits (with and without a mask, several images), variations, streamed generations and edits, stored
images, raw PNG answers, and the older ``/imagine`` API."""

from __future__ import annotations

import base64
import io
import socket
import time
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.router.stack import ALIAS, MODEL, Stack, start_stack, stop_stack

pytestmark = [pytest.mark.inference, pytest.mark.timeout(600)]

EXTRA = {"num_inference_steps": 2, "seed": 7}


def strict(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120, _strict_response_validation=True
    )


def png(size: tuple[int, int] = (64, 64), *, hole: bool = False, color: str = "navy") -> bytes:
    """An RGB picture, or (``hole``) an RGBA mask that is opaque but for a transparent square."""
    image = Image.new("RGBA" if hole else "RGB", size, color)
    if hole:
        w, h = size
        image.paste((0, 0, 0, 0), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decoded(b64: str | None) -> Image.Image:
    assert b64
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


def test_edit_with_a_mask(stack: Stack) -> None:
    result = strict(stack).images.edit(
        model=MODEL,
        image=("in.png", png(), "image/png"),
        mask=("mask.png", png(hole=True), "image/png"),
        prompt="a red hat",
        response_format="b64_json",
        extra_body=EXTRA,
    )
    assert result.data and len(result.data) == 1
    item = result.data[0]
    assert decoded(item.b64_json).size == (64, 64) and (item.model_extra or {}).get("id")


def test_edit_of_several_images_without_a_mask_by_alias(stack: Stack) -> None:
    result = strict(stack).images.edit(
        model=ALIAS,
        image=[("a.png", png(color="red"), "image/png"), ("b.png", png((96, 64), color="green"), "image/png")],
        prompt="watercolor",
        n=1,
        response_format="b64_json",
        extra_body=EXTRA,
    )
    assert result.data and [decoded(item.b64_json).size for item in result.data] == [(64, 64), (96, 64)]
    assert len({(item.model_extra or {})["id"] for item in result.data}) == 2


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks dall-e-2's endpoint so
def test_variation(stack: Stack) -> None:
    result = strict(stack).images.create_variation(
        model=MODEL, image=("in.png", png(), "image/png"), n=2, size="64x64", response_format="b64_json",
        extra_body=EXTRA,
    )  # fmt: skip
    assert result.data and len(result.data) == 2
    assert all(decoded(item.b64_json).size == (64, 64) for item in result.data)


def test_a_bad_mask_is_refused_by_the_router_before_any_pod(stack: Stack) -> None:
    before = [pod.request_count() for pod in stack.pods]
    with pytest.raises(openai.BadRequestError) as info:
        strict(stack).images.edit(
            model=MODEL,
            image=("in.png", png(), "image/png"),
            mask=("mask.png", png((32, 32), hole=True), "image/png"),
            prompt="x",
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "mask"
    assert [pod.request_count() for pod in stack.pods] == before


def test_generate_stream_with_two_partial_images(stack: Stack) -> None:
    events = list(
        strict(stack).images.generate(
            model=MODEL,
            prompt="a lighthouse",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 4, "seed": 1},
        )
    )
    kinds = [event.type for event in events]
    assert kinds[-1] == "image_generation.completed"
    assert 1 <= kinds.count("image_generation.partial_image") <= 2 and len(kinds) == kinds.count(kinds[0]) + 1
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    assert [e.partial_image_index for e in partials] == list(range(len(partials)))
    assert decoded(events[-1].b64_json).size == (64, 64)
    assert (events[-1].model_extra or {}).get("id")


def test_edit_stream(stack: Stack) -> None:
    events = list(
        strict(stack).images.edit(
            model=MODEL,
            image=("in.png", png(), "image/png"),
            prompt="a hat",
            stream=True,
            partial_images=1,
            extra_body={"num_inference_steps": 3, "seed": 1},
        )
    )
    assert [e.type for e in events][-1] == "image_edit.completed"
    assert {e.type for e in events} <= {"image_edit.partial_image", "image_edit.completed"}
    assert decoded(events[-1].b64_json).size == (64, 64)


def test_stored_images_come_back_by_id(stack: Stack) -> None:
    result = strict(stack).images.generate(
        model=MODEL, prompt="x", size="64x64", response_format="b64_json",
        extra_body={**EXTRA, "store": True, "conversation_id": "conv-1", "user": "u-1"},
    )  # fmt: skip
    assert result.data
    image_id = (result.data[0].model_extra or {})["id"]
    fetched = httpx.get(f"{stack.url}/v1/images/{image_id}", timeout=10)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.content == base64.b64decode(result.data[0].b64_json or "")
    described = httpx.get(f"{stack.url}/v1/images/{image_id}", headers={"Accept": "application/json"}, timeout=10)
    assert described.json()["conversation_id"] == "conv-1"


def test_accept_png_answers_the_png_itself(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.url}/v1/images/generations",
        json={"prompt": "x", "size": "64x64", **EXTRA},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (64, 64) and response.headers["x-image-id"]


def test_the_older_imagine_api(stack: Stack) -> None:
    generated = httpx.post(
        f"{stack.url}/imagine/generate",
        json={"prompt": "a cat", "img_size": 64, "guidance_scale": 5.0, "num_inference_steps": 2},
        timeout=120,
    )
    assert generated.status_code == 200 and generated.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(generated.content)).size == (64, 64)
    refused = httpx.post(f"{stack.url}/imagine/generate", json={"prompt": "x", "img_size": 4096}, timeout=10)
    assert refused.status_code == 422 and isinstance(refused.json()["detail"], str)
    assert httpx.get(f"{stack.url}/imagine/health", timeout=10).json() == {"status": "healthy"}
    info = httpx.get(f"{stack.url}/imagine/info", timeout=10).json()
    assert info["model"] == MODEL and info["is_loaded"] is True and info["error"] is None
    assert info["config"] == {
        "default_steps": 2, "default_guidance": 5.0, "min_img_size": 32, "max_img_size": 256, "default": 64
    }  # fmt: skip
    system = info["system_info"]
    assert system["total_memory"] > 0 and 0 <= system["cpu_usage"] <= 100 * 64


def test_metadata_and_openapi(stack: Stack) -> None:
    metadata = httpx.get(f"{stack.url}/v1/metadata", timeout=10).json()
    assert metadata["service"] == "kubediffusion" and [m["id"] for m in metadata["models"]] == [MODEL]
    assert metadata["models"][0]["supports"]["edits"] is True
    document = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert {"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"} <= set(document["paths"])


def _metric(pod_url: str, name: str) -> float:
    for line in httpx.get(f"{pod_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_stream_client_that_hangs_up_cancels_the_pods_work(tiny_model: Any, tmp_path: Any) -> None:
    stack = start_stack(tiny_model, tmp_path, pod_count=1)
    pod = stack.pods[0]
    body = (
        b'{"prompt": "long", "size": "256x256", "n": 4, "num_inference_steps": 8, "stream": true, "partial_images": 3}'
    )
    disconnected = 'kubediffusion_inference_requests_total{outcome="disconnected"}'
    try:
        host, port = stack.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=120) as client:
            client.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            received = b""
            while b"partial_image" not in received:  # the stream has started: the pod is generating
                chunk = client.recv(65536)
                assert chunk, received[:300]
                received += chunk
            assert b"200 OK" in received.split(b"\r\n", 1)[0]
        deadline = time.monotonic() + 60
        while _metric(pod.url, disconnected) < 1.0:
            assert time.monotonic() < deadline, "the pod still generates for a client that left"
            time.sleep(0.05)
    finally:
        stop_stack(stack)
