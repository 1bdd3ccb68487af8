"""The model pod's metrics for dashboards and the autoscaler: images in the running batch, generation
latency, load and compile time, accelerator memory (only where there is an accelerator)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import httpx
import pytest

from kubediffusion.inference.backend import BackendDescription
from kubediffusion.inference.metrics import InferenceMetrics
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"
GIB = 1 << 30


class GpuBackend(FakeBackend):
    """Says it is compiled and on CUDA, with 6 of 80 GiB free (the accelerator memory is device-wide)."""

    @property
    def description(self) -> BackendDescription:
        return dataclasses.replace(super().description, device="cuda", compiled=True)

    def vram(self) -> tuple[int, int] | None:
        return 6 * GIB, 80 * GIB


def sample(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


async def test_running_images_is_the_running_batch(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path, batch_window_ms=0), lambda _: backend) as (client, _):
        assert sample(await metrics(client), "kubediffusion_inference_running_images") == 0
        backend.gate.clear()
        running = asyncio.create_task(client.post(GENERATE, json={"prompt": "a", "n": 3}))
        await poll(backend.running.is_set)
        queued = asyncio.create_task(client.post(GENERATE, json={"prompt": "a", "n": 2}))
        await asyncio.sleep(0.05)
        during = await metrics(client)
        backend.gate.set()
        await asyncio.gather(running, queued)
        after = await metrics(client)
    assert sample(during, "kubediffusion_inference_running_images") == 3
    assert sample(during, "kubediffusion_inference_queue_depth") == 2
    assert sample(after, "kubediffusion_inference_running_images") == 0


async def test_generation_latency_counts_successful_answers_from_arrival(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        backend.gate.clear()
        answer = asyncio.create_task(client.post(GENERATE, json={"prompt": "a"}))
        await poll(backend.running.is_set)
        await asyncio.sleep(0.3)  # queueing and generation are both part of it
        backend.gate.set()
        assert (await answer).status_code == 200
        assert (await client.post(GENERATE, json={"prompt": "a", "stream": True})).status_code == 200
        assert (await client.post(GENERATE, json={"prompt": ""})).status_code == 400  # not a generation
        text = await metrics(client)
    histogram = "kubediffusion_inference_request_duration_seconds"
    assert sample(text, f"{histogram}_count") == 2
    assert sample(text, f'{histogram}_bucket{{le="0.25"}}') == 1  # the stream; the held one took longer
    total = sample(text, f"{histogram}_sum")
    assert total is not None and total >= 0.3


async def test_load_time_is_measured_and_compile_time_only_for_a_compiled_pipeline(tmp_path: Path) -> None:
    def slow_load(backend: FakeBackend) -> FakeBackend:
        time.sleep(0.1)
        return backend

    async with serve(settings_for(tmp_path), lambda _: slow_load(FakeBackend())) as (client, _):
        plain = await metrics(client)
    async with serve(settings_for(tmp_path, compile=True), lambda _: slow_load(GpuBackend())) as (client, _):
        compiled = await metrics(client)
    load = sample(plain, "kubediffusion_inference_load_seconds")
    assert load is not None and 0.1 <= load < 5
    assert sample(plain, "kubediffusion_inference_compile_seconds") == 0
    compile_seconds = sample(compiled, "kubediffusion_inference_compile_seconds")
    assert compile_seconds is not None and compile_seconds > 0  # the warm-up of every batch size


async def test_gpu_memory_is_exported_on_an_accelerator_only(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path), lambda _: GpuBackend()) as (client, _):
        gpu = await metrics(client)
    async with serve(settings_for(tmp_path), lambda _: FakeBackend()) as (client, _):
        cpu = await metrics(client)
    assert sample(gpu, 'kubediffusion_inference_gpu_memory_bytes{kind="used"}') == 74 * GIB
    assert sample(gpu, 'kubediffusion_inference_gpu_memory_bytes{kind="total"}') == 80 * GIB
    assert "# TYPE kubediffusion_inference_gpu_memory_bytes gauge" in cpu
    assert "kubediffusion_inference_gpu_memory_bytes{" not in cpu


def test_a_failing_device_query_does_not_fail_the_scrape() -> None:
    metrics = InferenceMetrics()

    def broken() -> tuple[int, int]:
        raise RuntimeError("CUDA error: device lost")

    metrics.gpu_memory.source = broken
    assert b"kubediffusion_inference_ready 0.0" in metrics.render()
