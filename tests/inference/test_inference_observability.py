"""The real tiny pipeline behind the real server, observed: the compute seconds it reports, its spans
(denoise and decode split from the one pipeline call by its real step times, then encode) in the
router's trace, and its metrics (load time, latency; no accelerator memory on CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubediffusion.api.computetime import COMPUTE_SECONDS_HEADER
from tests.inference.tinyserve import serve, tiny_settings

pytestmark = pytest.mark.timeout(300)
TRACE = "0af7651916cd43dd8448eb211c80319c"
ROUTER_SPAN = "b7ad6b7169203331"


def sample(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def test_a_real_generation_reports_compute_time_spans_and_metrics(tiny_models: dict[str, Path]) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra")
    pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto (dev extra)")
    from tests.unit.router.otlp import otlp_receiver

    with otlp_receiver() as (endpoint, receiver):
        settings = tiny_settings(tiny_models["sd"], otlp_endpoint=endpoint)
        async with serve(settings) as (client, _):
            headers = {"X-Request-Id": "tiny-1", "traceparent": f"00-{TRACE}-{ROUTER_SPAN}-01"}
            answer = await client.post(
                "/v1/images/generations",
                json={"prompt": "a lighthouse", "n": 2, "num_inference_steps": 3, "seed": 1},
                headers=headers,
            )
            metrics = (await client.get("/metrics")).text
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "tiny-1"
    compute = float(answer.headers[COMPUTE_SECONDS_HEADER])
    assert compute > 0

    spans = {span.name: span for span in receiver.spans if span.trace_id == TRACE}
    assert set(spans) == {"POST /v1/images/generations", "queue wait", "batch", "denoise", "decode", "encode"}
    server, batch = spans["POST /v1/images/generations"], spans["batch"]
    assert server.parent_span_id == ROUTER_SPAN and server.attributes["request.id"] == "tiny-1"
    assert batch.parent_span_id == spans["queue wait"].parent_span_id == server.span_id
    assert all(spans[name].parent_span_id == batch.span_id for name in ("denoise", "decode", "encode"))
    assert batch.attributes["images"] == 2 and batch.attributes["kubediffusion.compute_seconds"] == pytest.approx(
        compute, abs=1e-5
    )

    load = sample(metrics, "kubediffusion_inference_load_seconds")
    assert load is not None and load > 0
    assert sample(metrics, "kubediffusion_inference_compile_seconds") == 0
    assert sample(metrics, "kubediffusion_inference_request_duration_seconds_count") == 1
    assert sample(metrics, "kubediffusion_inference_running_images") == 0
    assert "kubediffusion_inference_gpu_memory_bytes{" not in metrics  # CPU: no accelerator memory
