"""A request's id and trace end to end: the official openai client -> the router (Kubernetes discovery,
JSON logs, spans over OTLP/HTTP to a receiver in this test) -> a model pod of the tiny model (run by the
e2e pod runner, its image's environment pointing its own exporter at the same receiver).

The router's side (issue 16): the client's X-Request-Id comes back in the answer and names the router's
log line for the request; the client's traceparent starts the router's spans (server, auth, route,
forward) in the client's trace. The pod's side (the model server's part of issue 16, against the contract
in docs/observability.md): the same request id in the pod's log, and the pod's spans (server, queue wait,
batch, denoise, decode, encode) in the same trace, its server span a child of the router's forward span;
the compute seconds the pod reports reach the router's usage counter (GPU-seconds).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kubediffusion.local import free_port
from tests.e2e.stack import E2EStack
from tests.support.waiting import wait_for
from tests.unit.router.otlp import Receiver, otlp_receiver

pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra")
pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto (dev extra)")

pytestmark = pytest.mark.e2e

MODEL = "traced"
TRACED_IMAGE = "kubediffusion/inference:e2e-traced"  # any image: the pod runner runs this checkout
OTLP_PORT = free_port()
OTLP_URL = f"http://127.0.0.1:{OTLP_PORT}"
ROUTER_ENV = {
    "KD_ROUTER_LOG_FORMAT": "json",
    "KD_ROUTER_OTLP_ENDPOINT": OTLP_URL,
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # spans exported within a tenth of a second
}
POD_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT": OTLP_URL, "OTEL_BSP_SCHEDULE_DELAY": "100", "KD_INFERENCE_LOG_FORMAT": "json"}
ROUTER_SERVICE = "kubediffusion-router"
POD_SERVICE = "kubediffusion-inference"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver(OTLP_PORT) as (_, received):
        yield received


@pytest.fixture(scope="module")
def stack(receiver: Receiver, e2e_stack: E2EStack) -> Iterator[E2EStack]:
    e2e_stack.runner.image_env[TRACED_IMAGE] = POD_ENV
    try:
        e2e_stack.apply_model(MODEL, {"source": {"tiny": {}}, "replicas": 1, "image": TRACED_IMAGE})
        e2e_stack.wait_ready(MODEL)
        yield e2e_stack
    finally:
        e2e_stack.runner.image_env.pop(TRACED_IMAGE, None)


def router_entries(stack: E2EStack) -> list[dict[str, object]]:
    entries = []
    for line in stack.router.log_path.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [entry for entry in entries if isinstance(entry, dict)]


def pod_logs(stack: E2EStack) -> str:
    return "".join(
        path.read_text(errors="replace")
        for path in Path(stack.runner.workdir).glob(f"{stack.namespace}-im-{MODEL}-*/container-*.log")
    )


def generate(stack: E2EStack, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    raw = stack.client(max_retries=0).images.with_raw_response.generate(
        model=MODEL, prompt="a lighthouse", size="64x64", response_format="b64_json", extra_headers=headers
    )
    return raw.http_response.status_code, dict(raw.http_response.headers)


def test_a_clients_request_id_is_in_the_answer_and_the_routers_log(stack: E2EStack) -> None:
    request_id = f"e2e-{secrets.token_hex(8)}"
    status, headers = generate(stack, {"X-Request-Id": request_id})
    assert status == 200 and headers["x-request-id"] == request_id
    lines = wait_for(
        lambda: [e for e in router_entries(stack) if e.get("request_id") == request_id],
        timeout=10,
        message=f"the router's log line of {request_id}",
    )
    assert any(f"model={MODEL}" in str(e["message"]) and " 200 " in str(e["message"]) for e in lines)


def test_the_router_spans_join_the_clients_trace(stack: E2EStack, receiver: Receiver) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    status, _ = generate(stack, {"traceparent": f"00-{trace_id}-{client_span}-01"})
    assert status == 200
    spans = wait_for(
        lambda: (
            (found := [s for s in receiver.spans if s.trace_id == trace_id and s.service == ROUTER_SERVICE])
            and {"auth", "route", "forward"} <= {s.name for s in found}
            and found
        ),
        timeout=20,
        message="the router's spans of the request",
    )
    server = next(s for s in spans if s.name == "POST /v1/images/generations")
    assert server.parent_span_id == client_span
    assert {s.name for s in spans if s.parent_span_id == server.span_id} >= {"auth", "route", "forward"}


def test_the_pod_logs_the_request_id_and_its_spans_continue_the_routers_trace(
    stack: E2EStack, receiver: Receiver
) -> None:
    """Needs the model server's side of issue 16 (request ids in its logs, its spans over OTLP)."""
    request_id, trace_id = f"e2e-{secrets.token_hex(8)}", secrets.token_hex(16)
    status, _ = generate(stack, {"X-Request-Id": request_id, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert status == 200
    wait_for(lambda: request_id in pod_logs(stack), timeout=20, message=f"{request_id} in the pod's log")
    lines = [entry for entry in json_lines(pod_logs(stack)) if entry.get("request_id") == request_id]
    assert any(str(entry["message"]).startswith("POST /v1/images/generations 200 ") for entry in lines), lines
    assert all(entry["trace_id"] == trace_id for entry in lines)
    spans = wait_for(
        lambda: (
            (found := [s for s in receiver.spans if s.trace_id == trace_id])
            and any(s.service != ROUTER_SERVICE for s in found)
            and found
        ),
        timeout=20,
        message="the pod's spans in the client's trace",
    )
    forward = next(s for s in spans if s.service == ROUTER_SERVICE and s.name == "forward")
    pod_roots = [s for s in spans if s.service != ROUTER_SERVICE and s.parent_span_id == forward.span_id]
    assert pod_roots, "the pod's server span is a child of the router's forward span"
    (server,) = pod_roots
    assert server.service == POD_SERVICE and server.attributes["request.id"] == request_id
    pod_spans = wait_for(
        lambda: (
            (found := {s.name: s for s in receiver.spans if s.trace_id == trace_id and s.service == POD_SERVICE})
            and {"queue wait", "batch", "denoise", "decode", "encode"} <= set(found)
            and found
        ),
        timeout=20,
        message="the pod's queue wait, batch, denoise, decode and encode spans",
    )
    batch = pod_spans["batch"]
    assert batch.parent_span_id == pod_spans["queue wait"].parent_span_id == server.span_id
    assert all(pod_spans[name].parent_span_id == batch.span_id for name in ("denoise", "decode", "encode"))


def gpu_seconds(stack: E2EStack) -> float:
    text = httpx.get(f"{stack.router.url}/metrics", timeout=10).text
    pattern = rf'^kubediffusion_router_usage_gpu_seconds_total\{{[^}}]*model="{MODEL}"[^}}]*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def test_the_compute_seconds_the_pod_reports_are_billed_and_not_passed_on(stack: E2EStack) -> None:
    before = gpu_seconds(stack)
    status, headers = generate(stack, {})
    assert status == 200
    assert "x-kubediffusion-compute-seconds" not in headers  # the router reads it and drops it
    assert gpu_seconds(stack) > before
