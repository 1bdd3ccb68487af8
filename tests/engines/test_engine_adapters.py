"""Each adapter (InvokeAI, ComfyUI, AUTOMATIC1111, OpenAI-compatible) behind the router, called with the
official ``openai`` client in strict mode, against a fake of its engine: n=1 and n=3 (seeds kept), what
the engine is sent, and every way the engine can fail: a 5xx, a body that is not JSON, a hang and a slow
job past the timeout, a 4xx with its own message, a job that fails, a connection refused, and
``/readyz`` following the engine's health."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.engines.stack import TIMEOUT_S, EngineStack
from tests.engines.upstream import pixel, seed_colour
from tests.support.waiting import wait_for
from tests.unit.api.sample_images import mask_png, png

pytestmark = pytest.mark.timeout(120)

REFUSAL_TEXT = {
    "invokeai": "the fake refuses this batch",
    "comfyui": "The fake refuses this prompt",
    "automatic1111": "Sampler not found",
    "openai": "safety system",
}


def client(stack: EngineStack) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=30, _strict_response_validation=True
    )


def decoded(result: Any) -> list[bytes]:
    assert result.data is not None
    return [base64.b64decode(item.b64_json) for item in result.data]


def size_and_format(data: bytes) -> tuple[tuple[int, int], str | None]:
    image = Image.open(io.BytesIO(data))
    return image.size, image.format


def seeded(stack: EngineStack, seed: int) -> dict[str, Any]:
    return {} if stack.engine == "openai" else {"seed": seed}


def test_one_image_through_the_router(stack: EngineStack) -> None:
    result = client(stack).images.generate(
        model="engine-model", prompt="a lighthouse", size="64x64", response_format="b64_json"
    )
    (image,) = decoded(result)
    assert size_and_format(image) == ((64, 64), "PNG")
    assert len(stack.behaviour.requests) == 1
    assert result.output_format == "png"


def test_three_images_keep_their_seeds(stack: EngineStack) -> None:
    result = client(stack).images.generate(prompt="three", n=3, size="128x64", extra_body=seeded(stack, 40))
    images = decoded(result)
    assert [size_and_format(image) for image in images] == [((128, 64), "PNG")] * 3
    if stack.engine == "openai":  # engine_max_n 2: the upstream's n limit splits the request
        assert [body["n"] for body in stack.behaviour.requests] == [2, 1]
    else:  # image i has seed + i (the fakes paint the seed)
        assert [pixel(image) for image in images] == [seed_colour(40 + i) for i in range(3)]


def test_what_the_engine_is_sent(stack: EngineStack) -> None:
    common = {"prompt": "a red barn", "size": "64x64"}
    if stack.engine == "openai":
        client(stack).images.generate(**common, quality="high", user="u-1")  # type: ignore[arg-type]
        (body,) = stack.behaviour.requests
        assert body == {
            "prompt": "a red barn",
            "n": 1,
            "size": "64x64",
            "model": "fake-image-1",
            "quality": "high",
            "user": "u-1",
        }
        return
    extra = {"seed": 7, "negative_prompt": "fog", "num_inference_steps": 3, "guidance_scale": 6.5}
    client(stack).images.generate(**common, extra_body=extra)  # type: ignore[arg-type]
    (body,) = stack.behaviour.requests
    if stack.engine == "automatic1111":
        assert {key: body[key] for key in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale")} == {
            "prompt": "a red barn",
            "negative_prompt": "fog",
            "seed": 7,
            "steps": 3,
            "cfg_scale": 6.5,
        }
        assert (body["width"], body["height"], body["batch_size"], body["n_iter"]) == (64, 64, 1, 1)
        assert body["override_settings"] == {"sd_model_checkpoint": "fake.safetensors"}
    elif stack.engine == "comfyui":
        nodes = body["prompt"]
        sampler = next(node["inputs"] for node in nodes.values() if node["class_type"] == "KSampler")
        texts = sorted(node["inputs"]["text"] for node in nodes.values() if node["class_type"] == "CLIPTextEncode")
        assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (7, 3, 6.5)
        assert texts == ["a red barn", "fog"]
    else:
        nodes = body["graph"]["nodes"]
        assert body["data"] == [[{"node_path": "kd_noise", "field_name": "seed", "items": [7]}]]
        assert (nodes["kd_denoise"]["steps"], nodes["kd_denoise"]["cfg_scale"]) == (3, 6.5)
        assert (nodes["kd_positive"]["prompt"], nodes["kd_negative"]["prompt"]) == ("a red barn", "fog")
        assert nodes["kd_model"]["model"]["key"] == "5a1b9c40-fake-sd15"


def test_an_upstream_500_is_a_502_envelope(stack: EngineStack) -> None:
    stack.behaviour.failure = "500"
    with pytest.raises(openai.InternalServerError) as caught:
        client(stack).images.generate(prompt="x", size="64x64")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error" and stack.engine in caught.value.message


def test_an_answer_that_is_not_json_is_a_502(stack: EngineStack) -> None:
    stack.behaviour.failure = "garbage"
    with pytest.raises(openai.InternalServerError) as caught:
        client(stack).images.generate(prompt="x", size="64x64")
    assert caught.value.status_code == 502 and caught.value.code == "bad_upstream_response"


def test_a_hanging_upstream_is_a_504_after_the_timeout(stack: EngineStack) -> None:
    stack.behaviour.failure = "hang"
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client(stack).images.generate(prompt="x", size="64x64")
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"
    assert TIMEOUT_S - 0.1 <= time.monotonic() - started < TIMEOUT_S + 10


def test_slow_within_the_timeout_succeeds_and_past_it_is_a_504(stack: EngineStack) -> None:
    stack.behaviour.delay_s = TIMEOUT_S / 4
    assert len(decoded(client(stack).images.generate(prompt="slow", size="64x64"))) == 1
    stack.behaviour.delay_s = TIMEOUT_S * 3
    with pytest.raises(openai.APIStatusError) as caught:
        client(stack).images.generate(prompt="too slow", size="64x64")
    assert caught.value.status_code == 504
    if stack.engine in ("invokeai", "comfyui"):  # the job the adapter gave up on is dropped upstream
        wait_for(lambda: stack.behaviour.cancelled, timeout=10, interval=0.05, message="the upstream job cancelled")


def test_an_upstream_4xx_is_a_400_with_its_message(stack: EngineStack) -> None:
    stack.behaviour.failure = "4xx"
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack).images.generate(prompt="x", size="64x64")
    assert REFUSAL_TEXT[stack.engine] in caught.value.message
    if stack.engine == "openai":  # an OpenAI-shaped upstream's code is passed on
        assert caught.value.code == "content_policy_violation"


def test_a_job_that_fails_upstream_is_a_502_with_the_engines_error(stack: EngineStack) -> None:
    if stack.engine not in ("invokeai", "comfyui"):
        pytest.skip("only the queue engines report a job's failure apart from the call")
    stack.behaviour.failure = "job_failed"
    with pytest.raises(openai.InternalServerError) as caught:
        client(stack).images.generate(prompt="x", size="64x64")
    assert caught.value.status_code == 502
    assert "out of memory" in caught.value.message.lower() or "Allocation on device" in caught.value.message


def readyz(stack: EngineStack) -> httpx.Response:
    return httpx.get(f"{stack.pod}/readyz", timeout=5)


def test_connection_refused_is_a_502_and_readyz_follows(stack: EngineStack) -> None:
    stack.fake.stop()
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client(stack).images.generate(prompt="x", size="64x64")
        assert caught.value.status_code == 502 and "Could not reach" in caught.value.message
        refused = wait_for(lambda: readyz(stack).status_code == 503 and readyz(stack), timeout=10, interval=0.2)
        assert refused.json()["error"]["code"] == "upstream_not_ready"
    finally:
        stack.fake.start()
    wait_for(lambda: readyz(stack).status_code == 200, timeout=10, interval=0.2, message="/readyz back to 200")


def test_readyz_flips_with_the_upstreams_health(stack: EngineStack) -> None:
    stack.behaviour.healthy = False
    down = wait_for(lambda: readyz(stack).status_code == 503 and readyz(stack), timeout=10, interval=0.2)
    assert stack.engine in down.json()["error"]["message"]
    metrics = httpx.get(f"{stack.pod}/metrics", timeout=5).text
    assert "kubediffusion_inference_ready 0.0" in metrics
    stack.behaviour.healthy = True
    wait_for(lambda: readyz(stack).status_code == 200, timeout=10, interval=0.2, message="/readyz back to 200")


def test_edits_are_img2img_where_the_engine_has_it_and_a_400_elsewhere(stack: EngineStack) -> None:
    edit = {"image": ("in.png", png((64, 64))), "mask": ("mask.png", mask_png((64, 64))), "prompt": "a window"}
    if stack.engine != "automatic1111":
        with pytest.raises(openai.BadRequestError) as caught:
            client(stack).images.edit(**edit, extra_body=seeded(stack, 3))  # type: ignore[arg-type]
        assert caught.value.param == "model" and caught.value.code == "unsupported_model"
        return
    result = client(stack).images.edit(**edit, n=2, extra_body={"seed": 3, "strength": 0.5})  # type: ignore[arg-type]
    assert [pixel(image) for image in decoded(result)] == [seed_colour(3), seed_colour(4)]
    (body,) = stack.behaviour.requests
    assert base64.b64decode(body["init_images"][0]) == edit["image"][1]
    assert base64.b64decode(body["mask"]) == edit["mask"][1]
    assert (body["inpainting_mask_invert"], body["denoising_strength"], body["batch_size"]) == (1, 0.5, 2)


def test_fields_the_engine_cannot_honour_are_a_400_naming_them(stack: EngineStack) -> None:
    field, value = ("seed", 5) if stack.engine == "openai" else ("output_format", "webp")
    with pytest.raises(openai.BadRequestError) as caught:
        client(stack).images.generate(prompt="x", size="64x64", extra_body={field: value})
    assert caught.value.param == field and caught.value.code == "unsupported_parameter"
    assert stack.behaviour.requests == []
