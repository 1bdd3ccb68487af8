"""Spans of the model server: with tracing off no OpenTelemetry SDK is even imported; with an OTLP endpoint
each image request's spans (server, queue wait, batch, denoise, decode, encode) reach an OTLP/HTTP
receiver in the router's trace, a batch shared by two requests is in both traces with one batch id, and
probes are not traced."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from kubediffusion.inference.backend import ImageJob, StepCallback
from kubediffusion.inference.tracing import NoTracer, make_tracer
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(60)
GENERATE = "/v1/images/generations"
SERVER_KIND, INTERNAL_KIND = 2, 1  # OTLP's SpanKind values


def parent(trace_id: str, span_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{span_id}-01"}


class SteppingBackend(FakeBackend):
    """Steps that take time (denoise) and a pipeline call that goes on after them (decode)."""

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        def step(seconds: float) -> None:
            time.sleep(0.01)
            if on_step is not None:
                on_step(0.01)

        images = super().generate(jobs, step)
        time.sleep(0.02)
        return images


def test_with_tracing_off_no_opentelemetry_sdk_or_exporter_is_imported() -> None:
    # Only the SDK and the exporter: FastAPI itself imports the OpenTelemetry API (a no-op without an SDK).
    script = """
import asyncio, json, sys
import httpx
from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings

async def main():
    app = create_app(InferenceSettings(engine="stub", model_name="m", batch_window_ms=0))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://pod"
    ) as client:
        while app.state.server.phase != "ready":
            await asyncio.sleep(0.01)
        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        answer = await client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)
        assert answer.status_code == 200, answer.text
    loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                    "opentelemetry.proto", "google.protobuf", "kubediffusion.inference.otel")))
    print(json.dumps(loaded))

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KD_INFERENCE_"))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_without_an_endpoint_or_without_the_sdk_there_is_no_tracer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(make_tracer(""), NoTracer)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert isinstance(make_tracer("http://collector:4318"), NoTracer)
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setitem(sys.modules, "kubediffusion.inference.otel", None)  # as if the extra were missing
    with caplog.at_level(logging.ERROR):
        assert isinstance(make_tracer("http://collector:4318"), NoTracer)
    assert "OpenTelemetry SDK is not installed" in caplog.text


async def test_spans_continue_the_routers_trace_and_a_shared_batch_is_in_each(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra")
    pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto (dev extra)")
    from tests.unit.router.otlp import otlp_receiver

    traces = [f"{i:032x}" for i in (0xA1, 0xB2, 0xC3)]
    backend = SteppingBackend()
    with otlp_receiver() as (endpoint, receiver):
        settings = settings_for(tmp_path, batch_window_ms=0, otlp_endpoint=endpoint)
        async with serve(settings, lambda _: backend) as (client, app):
            backend.gate.clear()
            alone = asyncio.create_task(
                client.post(GENERATE, json={"prompt": "a"}, headers=parent(traces[0], "00000000000000a1"))
            )
            await poll(backend.running.is_set)
            shared = [
                asyncio.create_task(
                    client.post(GENERATE, json={"prompt": "a", "n": n}, headers=parent(trace, f"{n:016x}"))
                )
                for trace, n in ((traces[1], 1), (traces[2], 3))
            ]
            await poll(lambda: app.state.server.batcher.queued_requests == 2)
            backend.gate.set()
            answers = await asyncio.gather(alone, *shared)
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200
        # leaving the lifespan shut the provider down: every span is exported by now
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert {span.service for span in receiver.spans} == {"kubediffusion-inference"}
    assert {span.trace_id for span in receiver.spans} == set(traces)  # nothing else traced (probes, warm-up)
    batches = {}
    router_spans = ("00000000000000a1", f"{1:016x}", f"{3:016x}")
    for trace, router_span, images in zip(traces, router_spans, (1, 1, 3), strict=True):
        spans = [span for span in receiver.spans if span.trace_id == trace]
        (server,) = [span for span in spans if span.name == f"POST {GENERATE}"]
        assert server.parent_span_id == router_span and server.kind == SERVER_KIND
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["kubediffusion.compute_seconds"] > 0
        (waited,) = [span for span in spans if span.name == "queue wait"]
        (batch,) = [span for span in spans if span.name == "batch"]
        assert waited.parent_span_id == batch.parent_span_id == server.span_id
        assert batch.kind == INTERNAL_KIND and batch.attributes["images"] == images
        phases = {span.name: span for span in spans if span.parent_span_id == batch.span_id}
        assert set(phases) == {"denoise", "decode", "encode"}  # no checker: no safety phase
        batches[trace] = batch
    first, second, third = (batches[trace] for trace in traces)
    assert first.attributes["kubediffusion.batch.requests"] == 1 and first.attributes["kubediffusion.batch.images"] == 1
    assert second.attributes["kubediffusion.batch.id"] == third.attributes["kubediffusion.batch.id"]
    assert second.attributes["kubediffusion.batch.id"] != first.attributes["kubediffusion.batch.id"]
    assert second.attributes["kubediffusion.batch.requests"] == 2
    assert second.attributes["kubediffusion.batch.images"] == 4


def test_phases_split_the_pipeline_call_by_its_step_times() -> None:
    from kubediffusion.inference.phases import PhaseClock
    from kubediffusion.inference.requestctx import BATCH, Batch

    batch = Batch.of([])
    token = BATCH.set(batch)
    try:
        observed: list[float] = []
        clock = PhaseClock(observed.append)
        for _ in range(3):
            time.sleep(0.01)
            clock.step(0.01)
        time.sleep(0.03)
        clock.generated()
        clock.lap("encode")
    finally:
        BATCH.reset(token)
    assert observed == [0.01] * 3
    denoise, decode, encode = batch.phases
    assert (denoise.name, decode.name, encode.name) == ("denoise", "decode", "encode")
    assert denoise.end - denoise.start == pytest.approx(0.03)
    assert decode.start == denoise.end and decode.end - decode.start >= 0.03 - 1e-3
    assert encode.start == decode.end
    PhaseClock().generated()  # outside a batch (warm-up): nothing recorded, nothing raised
