"""Encoding off the pipeline thread: requests differing only in output format share a pipeline call,
each answer comes in its own format, PNG at the configured zlib level, and the batcher settles results
that finish in the encoding pool while the next batch already runs."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from PIL import Image

from kubediffusion.inference.batcher import Batcher
from kubediffusion.inference.encoding import encode_image
from kubediffusion.inference.requestctx import Batch
from kubediffusion.inference.settings import InferenceSettings
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"


async def test_requests_differing_only_in_format_share_one_pipeline_call(tmp_path: Path) -> None:
    backend = FakeBackend()
    formats = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
    async with serve(settings_for(tmp_path, batch_window_ms=500), lambda _: backend) as (client, _):
        responses = await asyncio.gather(
            *(
                client.post(GENERATE, json={"prompt": "a", "seed": 5, "output_format": name, "output_compression": 60})
                for name in formats
            )
        )
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 3
    for name, response in zip(formats, responses, strict=True):
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
        assert image.format == formats[name]


@pytest.mark.parametrize("level", [0, 9])
async def test_png_answers_use_the_configured_compress_level(tmp_path: Path, level: int) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path, png_compress_level=level), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "seed": 5})
    answer = base64.b64decode(response.json()["data"][0]["b64_json"])
    (job,) = backend.calls[0]
    expected = encode_image(FakeBackend._image(job, 5), "png", png_level=level)
    assert answer == expected
    assert answer != encode_image(FakeBackend._image(job, 5), "png", png_level=9 - level)


def test_the_compress_level_is_a_setting_from_0_to_9(monkeypatch: pytest.MonkeyPatch) -> None:
    assert InferenceSettings().png_compress_level == 1
    monkeypatch.setenv("KD_INFERENCE_PNG_COMPRESS_LEVEL", "6")
    assert InferenceSettings().png_compress_level == 6
    with pytest.raises(ValueError, match="png_compress_level"):
        InferenceSettings(png_compress_level=10)


def test_the_other_performance_settings_read_their_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defaults = InferenceSettings()
    assert (defaults.dtype, defaults.compile_cache_dir, defaults.vae_slicing_pixels) == ("auto", None, 4 * 1024 * 1024)
    monkeypatch.setenv("KD_INFERENCE_COMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KD_INFERENCE_VAE_SLICING_PIXELS", "0")
    monkeypatch.setenv("KD_INFERENCE_DTYPE", "float16")  # an explicit dtype stays as it was
    settings = InferenceSettings()
    assert (settings.compile_cache_dir, settings.vae_slicing_pixels, settings.dtype) == (tmp_path, 0, "float16")


async def test_results_finishing_elsewhere_settle_while_the_next_batch_runs() -> None:
    pending: list[Future[str]] = []
    handed_over = threading.Event()
    batches: list[list[str]] = []
    reported: list[int] = []

    def run(items: list[str]) -> list[Future[str] | str]:
        batches.append(items)
        if items == ["first"]:
            pending.append(Future())
            handed_over.set()
            return [pending[0]]
        return [f"done-{item}" for item in items]

    def on_batch(batch: Batch) -> None:
        reported.append(batch.images)

    batcher: Batcher[str, str] = Batcher(
        run, key=lambda _: "k", size=lambda _: 1, max_batch_size=4, batch_window_s=0, max_queue=8, on_batch=on_batch
    )
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit("first"))
        assert await asyncio.to_thread(handed_over.wait, 5)
        second = await asyncio.wait_for(batcher.submit("second"), 5)  # the worker did not wait for "first"
        assert second == "done-second" and not first.done()
        assert reported == [1]  # "second" reported; "first" only once its result is done
        pending[0].set_result("encoded-first")
        assert await asyncio.wait_for(first, 5) == "encoded-first"
        assert reported == [1, 1]
    finally:
        await batcher.stop()


async def test_a_result_that_fails_elsewhere_fails_only_its_item() -> None:
    def run(items: list[str]) -> list[Future[str]]:
        futures: list[Future[str]] = [Future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            if item == "bad":
                future.set_exception(ValueError("cannot encode"))
            else:
                future.set_result(item.upper())
        return futures

    batcher: Batcher[str, str] = Batcher(
        run, key=lambda _: "k", size=lambda _: 1, max_batch_size=4, batch_window_s=0.05, max_queue=8
    )
    batcher.start()
    try:
        good, bad = await asyncio.gather(batcher.submit("good"), batcher.submit("bad"), return_exceptions=True)
        assert good == "GOOD"
        assert isinstance(bad, ValueError)
    finally:
        await batcher.stop()
