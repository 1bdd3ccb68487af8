"""Safety on the real tiny SD pipeline: a bundled StableDiffusionSafetyChecker (as SD 1.x repositories ship
one) forced to flag everything rejects or blurs as configured, never returns black; a checker directory
by path; ``moderation: low`` where allowed; blocked terms never reach the pipeline."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy
from PIL import Image, ImageChops

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference.backend import ImageBackend, ImageJob, ModelLoadError, StepCallback
from kubediffusion.inference.moderation import obscure
from kubediffusion.inference.pipeline import load_backend
from kubediffusion.inference.settings import InferenceSettings
from tests.inference.tinyserve import serve, tiny_settings

pytestmark = [pytest.mark.inference, pytest.mark.timeout(300)]
GENERATE = "/v1/images/generations"
REQUEST = {"prompt": "a red fox", "seed": 9}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


async def post(client: Any, **request: Any) -> Any:
    return await client.post(GENERATE, json={**REQUEST, **request})


def test_diffusers_own_checker_would_return_black_images(tiny_extras: dict[str, Path]) -> None:
    """What this project fixes: left in the pipeline, the checker blacks out what it flags."""
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_extras["checked"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    result = pipe("a red fox", num_inference_steps=2, generator=torch.Generator().manual_seed(9), width=64, height=64)
    assert result.nsfw_content_detected == [True]
    assert result.images[0].getbbox() is None  # all black


async def test_flagged_images_are_rejected_with_moderation_blocked(tiny_extras: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_extras["checked"], safety={"checker": "pipeline", "action": "reject"})
    async with serve(settings) as (client, app):
        assert app.state.server.backend.description.safety_checker == "StableDiffusionSafetyChecker"
        one, two = await post(client), await post(client, n=2)
        metrics = (await client.get("/metrics")).text
    for response in (one, two):
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("moderation_blocked", "image_generation_user_error")
        assert error["moderation_details"] == {"moderation_stage": "output"}
    assert 'kubediffusion_inference_flagged_images_total{action="reject"} 3.0' in metrics
    assert 'kubediffusion_inference_requests_total{outcome="moderation_blocked"} 2.0' in metrics


async def test_flagged_images_are_blurred_never_black(tiny_extras: dict[str, Path]) -> None:
    checked = tiny_extras["checked"]
    async with serve(tiny_settings(checked, safety={"checker": "none"})) as (client, app):
        assert app.state.server.backend.description.safety_checker is None
        plain = await post(client, n=2)
    async with serve(tiny_settings(checked, safety={"checker": "pipeline", "action": "blur"})) as (client, _):
        blurred = await post(client, n=2)
        metrics = (await client.get("/metrics")).text
    assert plain.status_code == blurred.status_code == 200
    assert "moderation" not in plain.json()
    assert blurred.json()["moderation"] == {"action": "blur", "flagged": 2, "blurred": [0, 1]}
    for shown, original in zip(blurred.json()["data"], plain.json()["data"], strict=True):
        image, source = decode(shown["b64_json"]), decode(original["b64_json"])
        assert source.getbbox() is not None  # checker none: the image itself, not black
        assert ImageChops.difference(image, obscure(source)).getbbox() is None
        assert numpy.asarray(image).mean() > 10  # a blur of the image, not a black square
    assert 'kubediffusion_inference_flagged_images_total{action="blur"} 2.0' in metrics


async def test_auto_uses_the_bundled_checker_and_a_directory_can_be_named(tiny_extras: dict[str, Path]) -> None:
    async with serve(tiny_settings(tiny_extras["checked"])) as (client, _):  # checker: auto
        assert (await post(client)).status_code == 400
    plain_model = tiny_extras["sd"]
    async with serve(tiny_settings(plain_model)) as (client, app):  # auto, nothing bundled: no checker
        assert app.state.server.backend.description.safety_checker is None
        base = await post(client)
    flag_all = str(tiny_extras["checked"] / "safety_checker")
    async with serve(tiny_settings(plain_model, safety={"checker": flag_all})) as (client, _):
        assert (await post(client)).status_code == 400
    async with serve(tiny_settings(plain_model, safety={"checker": str(tiny_extras["flag-none"])})) as (client, app):
        assert app.state.server.backend.description.safety_checker == "StableDiffusionSafetyChecker"
        passed = await post(client)
    assert passed.status_code == 200 and passed.json()["data"] == base.json()["data"]


async def test_low_moderation_skips_the_checker_only_where_allowed(tiny_extras: dict[str, Path]) -> None:
    checked = tiny_extras["checked"]
    allowed = tiny_settings(checked, safety={"checker": "pipeline", "allowLowModeration": True})
    async with serve(allowed) as (client, _):
        low, auto = await post(client, moderation="low"), await post(client, moderation="auto")
    async with serve(tiny_settings(checked, safety={"checker": "pipeline"})) as (client, _):
        not_allowed = await post(client, moderation="low")
    assert low.status_code == 200 and decode(low.json()["data"][0]["b64_json"]).getbbox() is not None
    assert auto.status_code == 400 and not_allowed.status_code == 400


async def test_a_checked_stream_has_no_partial_images(tiny_extras: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_extras["checked"], safety={"checker": "pipeline", "action": "blur"})
    async with serve(settings) as (client, _):
        response = await post(client, stream=True, partial_images=2)
    events = [event.event for event in SSEDecoder().feed(response.content)]
    assert events == ["image_generation.completed"]


def test_checker_pipeline_on_a_model_without_one_fails_the_load(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="ships no safety checker"):
        load_backend(tiny_settings(tiny_models["sd"], safety={"checker": "pipeline"}))
    with pytest.raises(ModelLoadError, match="not a checker directory"):
        load_backend(tiny_settings(tiny_models["sd"], safety={"checker": str(tiny_models["sd"] / "scheduler")}))


class CountingBackend:
    def __init__(self, inner: ImageBackend) -> None:
        self.inner = inner
        self.prompts: list[str] = []

    @property
    def description(self) -> Any:
        return self.inner.description

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        self.prompts += [job.params.prompt for job in jobs]
        return self.inner.generate(jobs, on_step)

    def vram(self) -> tuple[int, int] | None:
        return self.inner.vram()

    def close(self) -> None:
        self.inner.close()


async def test_blocked_terms_never_reach_the_pipeline(tiny_models: dict[str, Path]) -> None:
    spies: list[CountingBackend] = []

    def loader(settings: InferenceSettings) -> CountingBackend:
        spies.append(CountingBackend(load_backend(settings)))
        return spies[0]

    settings = tiny_settings(tiny_models["sd"], warmup=False, safety={"blockedTerms": ["red fox", "nud*"]})
    async with serve(settings, loader) as (client, _):
        blocked = [await post(client), await post(client, prompt="NUDITY"), await post(client, stream=True)]
        allowed = await post(client, prompt="a red box")
        metrics = (await client.get("/metrics")).text
    assert [response.status_code for response in blocked] == [400, 400, 400]
    assert {response.json()["error"]["code"] for response in blocked} == {"moderation_blocked"}
    assert allowed.status_code == 200
    assert spies[0].prompts == ["a red box"]
    assert "kubediffusion_inference_batch_size_count 1.0" in metrics
    assert "kubediffusion_inference_blocked_prompts_total 3.0" in metrics
