"""Safety in the inference app with fake backends: blocked prompts never reach the batcher, the checker's
flags become rejections (dropped images, a 400 when all are) or blurs, never black, as configured, once
per batch and only for moderated requests; counted in metrics; streams get no previews of them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference.moderation import obscure
from tests.unit.inference.fakes import FakeBackend, FlaggingBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"


def decode(item: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    return image.convert("RGB")


def safety(tmp_path: Path, **values: Any) -> Any:
    return settings_for(tmp_path, safety=values)


async def test_blocked_prompt_is_refused_before_the_batcher_and_counted(tmp_path: Path) -> None:
    backend = FakeBackend()
    settings = safety(tmp_path, blockedTerms=["forbidden fruit", "nud*"], checker="none")
    async with serve(settings, lambda _: backend) as (client, _):
        for prompt in ("the FORBIDDEN fruit", "nudity"):
            response = await client.post(GENERATE, json={"prompt": prompt, "n": 2})
            assert response.status_code == 400
            error = response.json()["error"]
            assert (error["code"], error["type"]) == ("moderation_blocked", "image_generation_user_error")
            assert error["moderation_details"] == {"moderation_stage": "input"}
        stream = await client.post(GENERATE, json={"prompt": "nude", "stream": True})
        assert stream.status_code == 400 and stream.json()["error"]["code"] == "moderation_blocked"
        assert (await client.post(GENERATE, json={"prompt": "a fruit"})).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert [call[0].params.prompt for call in backend.calls] == ["a fruit"]
    assert "kubediffusion_inference_blocked_prompts_total 3.0" in metrics
    assert 'kubediffusion_inference_requests_total{outcome="moderation_blocked"} 3.0' in metrics
    assert "kubediffusion_inference_batch_size_count 1.0" in metrics  # only the allowed request ran
    assert "kubediffusion_inference_images_total 1.0" in metrics


async def test_edit_prompts_are_checked_too(tmp_path: Path) -> None:
    from tests.unit.api.sample_images import form, png

    backend = FakeBackend()
    async with serve(safety(tmp_path, blockedTerms=["barn"]), lambda _: backend) as (client, _):
        body, content_type = form({"prompt": "a red barn"}, [("image", png())])
        response = await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
    assert response.status_code == 400 and response.json()["error"]["code"] == "moderation_blocked"
    assert backend.calls == []


async def test_reject_drops_flagged_images_and_says_how_many(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    async with serve(safety(tmp_path, action="reject"), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "n": 3, "seed": 1})  # seeds 1, 2, 3
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    payload = response.json()
    assert payload["moderation"] == {"action": "reject", "flagged": 2}
    assert [decode(item).getpixel((0, 0)) for item in payload["data"]] == [(2, 7, 9)]
    assert 'kubediffusion_inference_flagged_images_total{action="reject"} 2.0' in metrics
    assert backend.checked == [1, 3]  # the warm-up image (the checker warms up too), then the batch


async def test_reject_of_every_image_is_moderation_blocked_at_the_output_stage(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    async with serve(safety(tmp_path), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "seed": 7})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["moderation_details"]) == (
        "moderation_blocked",
        None,
        {"moderation_stage": "output"},
    )
    assert 'kubediffusion_inference_requests_total{outcome="moderation_blocked"} 1.0' in metrics
    assert "kubediffusion_inference_blocked_prompts_total 0.0" in metrics


async def test_blur_blurs_flagged_images_never_black_and_leaves_the_others(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    async with serve(safety(tmp_path, action="blur"), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "n": 2, "seed": 1, "size": "128x64"})
        metrics = (await client.get("/metrics")).text
    payload = response.json()
    assert response.status_code == 200 and payload["moderation"] == {"action": "blur", "flagged": 1, "blurred": [0]}
    blurred, clean = (decode(item) for item in payload["data"])
    job = backend.calls[0][0]
    original = FlaggingBackend._image(job, 1)
    assert ImageChops.difference(blurred, obscure(original)).getbbox() is None
    assert ImageChops.difference(blurred, original).getbbox() is not None
    assert blurred.getbbox() is not None  # not black
    assert ImageChops.difference(clean, FlaggingBackend._image(job, 2)).getbbox() is None
    assert 'kubediffusion_inference_flagged_images_total{action="blur"} 1.0' in metrics


async def test_low_moderation_skips_the_checker_only_where_allowed_in_one_call_per_batch(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    settings = safety(tmp_path, allowLowModeration=True)
    async with serve(settings, lambda _: backend) as (client, _):
        backend.gate.clear()
        backend.checked.clear()
        blocker = asyncio.ensure_future(client.post(GENERATE, json={"prompt": "first", "seed": 2}))
        await poll(backend.running.is_set)  # the worker holds the first batch; the next two queue together
        low = asyncio.ensure_future(client.post(GENERATE, json={"prompt": "a", "seed": 1, "moderation": "low"}))
        auto = asyncio.ensure_future(client.post(GENERATE, json={"prompt": "b", "seed": 3, "n": 2}))
        await asyncio.sleep(0.1)
        backend.gate.set()
        first, low_response, auto_response = await asyncio.gather(blocker, low, auto)
    assert first.status_code == 200
    assert [len(call) for call in backend.calls] == [1, 2]  # low and auto shared one batch
    assert backend.checked == [1, 2]  # one checker call per batch, only the moderated images
    assert low_response.status_code == 200 and "moderation" not in low_response.json()
    assert auto_response.json()["moderation"] == {"action": "reject", "flagged": 1}


async def test_low_moderation_is_checked_where_the_model_does_not_allow_it(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    async with serve(safety(tmp_path), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "seed": 1, "moderation": "low"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "moderation_blocked"


async def test_a_moderated_stream_has_no_partials_and_all_flagged_ends_in_an_error_event(tmp_path: Path) -> None:
    backend = FlaggingBackend()
    async with serve(safety(tmp_path, allowLowModeration=True), lambda _: backend) as (client, _):
        request = {"prompt": "a", "stream": True, "partial_images": 2, "n": 2, "seed": 2}
        events = [(e.event, e.json()) for e in SSEDecoder().feed((await client.post(GENERATE, json=request)).content)]
        low = {**request, "moderation": "low"}
        low_events = [e.event for e in SSEDecoder().feed((await client.post(GENERATE, json=low)).content)]
        blocked = {**request, "n": 1, "seed": 1}
        last = SSEDecoder().feed((await client.post(GENERATE, json=blocked)).content)[-1]
        metrics = (await client.get("/metrics")).text
    assert [name for name, _ in events] == ["image_generation.completed"]  # seed 3 was flagged, no partials
    assert low_events.count("image_generation.partial_image") == 4
    assert last.event == "error" and json.loads(last.data)["error"]["code"] == "moderation_blocked"
    assert 'kubediffusion_inference_requests_total{outcome="moderation_blocked"} 1.0' in metrics


async def test_without_a_checker_nothing_is_flagged(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(safety(tmp_path, action="blur"), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "seed": 1})
    assert response.status_code == 200 and "moderation" not in response.json()


def test_obscure_is_a_strong_blur_of_the_image_not_black() -> None:
    noise = Image.effect_noise((256, 128), 90).convert("RGB")
    blurred = obscure(noise)
    assert blurred.size == noise.size and blurred.mode == "RGB"
    assert blurred.getbbox() is not None
    neighbours = ImageChops.difference(
        blurred, blurred.transform(blurred.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0))
    )
    assert neighbours.convert("L").crop((0, 0, 254, 128)).getextrema()[1] < 20  # no detail survives
