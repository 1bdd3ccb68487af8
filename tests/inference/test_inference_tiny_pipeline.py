"""The tiny SD and SDXL pipelines through the real loader, generation and encoding (CPU, seconds)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image

from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.imagemodel.tiny import SMOKE_TEST_MARKER, TINY_DEFAULTS
from kubediffusion.inference.backend import ImageBackend, ImageJob, StepCallback
from kubediffusion.inference.pipeline import load_backend
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import main as tiny_main
from tests.inference.tinyserve import poll, serve, tiny_settings

pytestmark = [pytest.mark.inference, pytest.mark.timeout(180)]
GENERATE = "/v1/images/generations"


def images_of(payload: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in payload["data"]]


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
async def test_tiny_model_generates_decodable_images_in_each_format(tiny_models: dict[str, Path], kind: str) -> None:
    async with serve(tiny_settings(tiny_models[kind], warmup=False)) as (client, _):
        for output_format, pil_format in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
            response = await client.post(
                GENERATE,
                json={
                    "prompt": "a cat",
                    "size": "128x64",
                    "seed": 1,
                    "output_format": output_format,
                    "output_compression": 70,
                },
            )
            assert response.status_code == 200, response.text
            (image,) = images_of(response.json())
            assert (image.format, image.size) == (pil_format, (128, 64))
            image.load()


async def test_n_images_in_one_request(tiny_models: dict[str, Path]) -> None:
    async with serve(tiny_settings(tiny_models["sd"], warmup=False)) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a cat", "n": 3, "seed": 3})
    images = images_of(response.json())
    assert len(images) == 3
    assert len({image.tobytes() for image in images}) == 3  # seeds 3, 4, 5 differ


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
async def test_same_seed_same_bytes_different_seed_different_bytes(tiny_models: dict[str, Path], kind: str) -> None:
    async with serve(tiny_settings(tiny_models[kind], warmup=False)) as (client, _):
        request = {"prompt": "a red fox", "seed": 1234, "negative_prompt": "blurry"}
        first = (await client.post(GENERATE, json=request)).json()["data"]
        second = (await client.post(GENERATE, json=request)).json()["data"]
        other = (await client.post(GENERATE, json={**request, "seed": 1235})).json()["data"]
    assert first == second
    assert first != other


class SpyBackend:
    """Wraps the real backend to record when generation happened relative to readiness."""

    def __init__(self, inner: ImageBackend, app_phase: Any) -> None:
        self.inner = inner
        self.phase_at_calls: list[str] = []
        self.app_phase = app_phase

    @property
    def description(self) -> Any:
        return self.inner.description

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        self.phase_at_calls.append(self.app_phase())
        return self.inner.generate(jobs, on_step)

    def vram(self) -> tuple[int, int] | None:
        return self.inner.vram()

    def close(self) -> None:
        self.inner.close()


async def test_readyz_flips_only_after_warm_up(tiny_models: dict[str, Path]) -> None:
    holder: dict[str, Any] = {}
    release = threading.Event()

    def loader(settings: InferenceSettings) -> SpyBackend:
        assert release.wait(30)
        spy = SpyBackend(load_backend(settings), lambda: holder["app"].state.server.phase)
        holder["spy"] = spy
        return spy

    settings = tiny_settings(tiny_models["sd"])
    async with serve(settings, loader, wait_ready=False) as (client, app):
        holder["app"] = app
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/health")).status_code == 200
        release.set()
        while (response := await client.get("/readyz")).status_code != 200:
            assert response.status_code == 503
            await asyncio.sleep(0.01)
            assert app.state.server.phase != "failed", app.state.server.error
        assert holder["spy"].phase_at_calls == ["warming"]  # exactly one warm-up image, before ready
        models = (await client.get("/v1/models")).json()["data"][0]
        assert models["smoke_test"] is True and models["pipeline"] == "StableDiffusionPipeline"


async def test_concurrent_requests_are_batched(tiny_models: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, batch_window_ms=300, max_batch_size=4)
    async with serve(settings) as (client, _):
        responses = await asyncio.gather(
            *(client.post(GENERATE, json={"prompt": f"p{i}", "seed": i}) for i in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4
        metrics = (await client.get("/metrics")).text
    assert "kubediffusion_inference_batch_size_count 1.0" in metrics
    assert "kubediffusion_inference_batch_size_sum 4.0" in metrics
    assert "kubediffusion_inference_step_seconds_count 2.0" in metrics


async def test_batched_image_equals_the_same_request_alone(tiny_models: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, batch_window_ms=300, max_batch_size=4)
    request = {"prompt": "a lighthouse", "seed": 77}
    async with serve(settings) as (client, _):
        alone = (await client.post(GENERATE, json=request)).json()["data"]
        together = await asyncio.gather(
            client.post(GENERATE, json=request), client.post(GENERATE, json={"prompt": "other", "seed": 1})
        )
    assert together[0].json()["data"] == alone


async def test_full_queue_answers_429_with_retry_after(tiny_models: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, max_batch_size=1, max_queue=1, batch_window_ms=0)
    slow = {"prompt": "slow", "num_inference_steps": 16, "size": "256x256"}
    async with serve(settings) as (client, app):
        running = asyncio.create_task(client.post(GENERATE, json=slow))
        await poll(lambda: app.state.server.batcher.running_images == 1)
        queued = asyncio.create_task(client.post(GENERATE, json=slow))
        await poll(lambda: app.state.server.batcher.queued_images == 1)
        rejected = await client.post(GENERATE, json=slow)
        assert rejected.status_code == 429
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        assert int(rejected.headers["retry-after"]) >= 1
        assert [r.status_code for r in await asyncio.gather(running, queued)] == [200, 200]


def test_tiny_model_cli_writes_a_labelled_pipeline(tmp_path: Path) -> None:
    assert tiny_main([str(tmp_path / "xl"), "--kind", "sdxl"]) == 0
    assert (tmp_path / "xl" / "model_index.json").is_file()
    assert (tmp_path / "xl" / "tokenizer_2").is_dir()
    marker = json.loads((tmp_path / "xl" / SMOKE_TEST_MARKER).read_text())
    assert marker["smoke_test"] is True
    # The marker's defaults are the ones an ImageModel with source.tiny and `kubediffusion local` serve with.
    assert GenerationDefaults.model_validate(marker["defaults"]) == TINY_DEFAULTS


def test_tiny_model_weights_are_reproducible(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from kubediffusion.tinymodel import write_tiny_pipeline

    write_tiny_pipeline(tmp_path / "again", "sd")
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (tmp_path / "again" / part).read_bytes() == (tiny_models["sd"] / part).read_bytes()


def test_fp16_on_cpu_falls_back_to_float32(tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    backend = load_backend(tiny_settings(tiny_models["sd"], dtype="float16"))
    assert (backend.description.device, backend.description.dtype) == ("cpu", "float32")
    assert backend.description.smoke_test is True
    assert "float16 is not supported on CPU" in caplog.text
    assert "smoke-test model" in caplog.text


def test_named_pipeline_class_loads_and_unknown_class_fails_clearly(tiny_models: dict[str, Path]) -> None:
    from kubediffusion.inference.backend import ModelLoadError

    backend = load_backend(tiny_settings(tiny_models["sdxl"], pipeline="StableDiffusionXLPipeline"))
    assert backend.description.pipeline_class == "StableDiffusionXLPipeline"
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline class"):
        load_backend(tiny_settings(tiny_models["sd"], pipeline="NoSuchPipeline"))
