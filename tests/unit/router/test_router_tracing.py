"""Trace context and spans: the client's traceparent reaches the pod (or a new trace starts); with tracing
off no OpenTelemetry SDK is even imported; with an OTLP endpoint the router's spans (server, auth, route,
forward) reach an OTLP/HTTP receiver with one trace id, and the pod's traceparent is the forward span."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.router.tracing import PassThroughTracer, TraceParent, make_tracer, otlp_endpoint
from tests.unit.router.tenancy import A_KEY, MODELS, bearer, tenants_file

GEN = "/v1/images/generations"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (CLIENT_PARENT, True),
        (f"01-{CLIENT_TRACE}-b7ad6b7169203331-01-future", True),  # a later version may add fields
        (f"00-{CLIENT_TRACE}-b7ad6b7169203331-01-extra", False),
        (f"00-{'0' * 32}-b7ad6b7169203331-01", False),
        (f"00-{CLIENT_TRACE}-{'0' * 16}-01", False),
        (f"ff-{CLIENT_TRACE}-b7ad6b7169203331-01", False),
        (f"00-{CLIENT_TRACE.upper()}-b7ad6b7169203331-01", False),
        ("garbage", False),
    ],
)
def test_traceparent_parsing_follows_w3c(header: str, valid: bool) -> None:
    assert (TraceParent.parse(header) is not None) is valid


def test_the_otlp_endpoint_comes_from_the_setting_or_the_standard_variables() -> None:
    assert otlp_endpoint("", {}) is None
    assert otlp_endpoint("http://collector:4318/", {}) == "http://collector:4318/v1/traces"
    assert otlp_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
    assert otlp_endpoint("", traces) == "http://c:4318/custom"
    assert otlp_endpoint("http://mine:4318", traces) == "http://mine:4318/v1/traces"  # the router's setting wins
    assert otlp_endpoint("http://mine:4318", {"OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_endpoint("http://mine:4318", {"OTEL_TRACES_EXPORTER": "none"}) is None


async def test_with_tracing_off_the_clients_traceparent_reaches_the_pod_as_is(router: Any, pods: Any) -> None:
    async with router() as client:
        traced = await client.post(
            GEN, json={"prompt": "x"}, headers={"traceparent": CLIENT_PARENT, "tracestate": "vendor=1"}
        )
        untraced = await client.post(GEN, json={"prompt": "x"})
        broken = await client.post(GEN, json={"prompt": "x"}, headers={"traceparent": "00-nope"})
    assert traced.status_code == untraced.status_code == broken.status_code == 200
    first, second, third = pods.requests
    assert first.headers["traceparent"] == CLIENT_PARENT and first.headers["tracestate"] == "vendor=1"
    for request in (second, third):
        started = TraceParent.parse(request.headers["traceparent"])
        assert started is not None and started.trace_id != CLIENT_TRACE and started.flags == "01"
        assert "tracestate" not in request.headers
    assert second.headers["traceparent"] != third.headers["traceparent"]


def test_with_tracing_off_no_opentelemetry_sdk_or_exporter_is_imported(tmp_path: Path) -> None:
    script = """
import asyncio, json, sys
import httpx
from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

def pod(request):
    return httpx.Response(200, json={"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]})

async def main():
    settings = RouterSettings(discovery="static", storage_dir=sys.argv[1], signing_key="s" * 32)
    table = RoutingTable([ModelEntry(name="m", endpoints=("http://127.0.9.1:8000",))])
    app = create_app(settings, discovery=StaticDiscovery(table=table), transport=httpx.MockTransport(pod))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://r"
    ) as client:
        answer = await client.post("/v1/images/generations", json={"prompt": "x"})
        assert answer.status_code == 200, answer.text
    loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                    "opentelemetry.proto", "google.protobuf", "kubediffusion.router.otel")))
    print(json.dumps(loaded))

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KD_ROUTER_"))}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_without_an_endpoint_the_tracer_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(make_tracer(""), PassThroughTracer)


async def test_spans_reach_an_otlp_receiver_with_one_trace_id(router: Any, pods: Any, tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra")
    pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto (dev extra)")
    from tests.unit.router.otlp import otlp_receiver

    unreachable = "http://127.0.9.9:8000"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    pods.behaviour[unreachable] = refuse
    models = [dataclasses.replace(MODELS[0], endpoints=("http://127.0.9.1:8000", unreachable)), MODELS[1]]
    with otlp_receiver() as (endpoint, receiver):
        async with router(models, tenants_file=tenants_file(tmp_path), otlp_endpoint=endpoint) as client:
            headers = {**bearer(A_KEY), "X-Request-Id": "traced-1"}
            fresh = await client.post(GEN, json={"prompt": "x", "model": "tiny-sd"}, headers=headers)
            joined = await client.post(
                GEN, json={"prompt": "x", "model": "tiny-sd"}, headers={**bearer(A_KEY), "traceparent": CLIENT_PARENT}
            )
        # leaving the app's lifespan shut the provider down: every span is exported by now
    assert fresh.status_code == joined.status_code == 200
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    servers = receiver.named(f"POST {GEN}")
    assert len(servers) == 2 and all(s.service == "kubediffusion-router" for s in servers)
    first = next(s for s in servers if s.attributes.get("request.id") == "traced-1")
    second = next(s for s in servers if s is not first)
    assert second.trace_id == CLIENT_TRACE and second.parent_span_id == "b7ad6b7169203331"  # the client's trace
    assert first.trace_id != CLIENT_TRACE and first.parent_span_id == ""
    for server in (first, second):
        mine = [s for s in receiver.spans if s.trace_id == server.trace_id]
        names = sorted(s.name for s in mine)
        assert "auth" in names and "route" in names and names.count("forward") >= 1
        assert all(s.parent_span_id == server.span_id for s in mine if s.name in ("auth", "route", "forward"))
        assert server.attributes["http.response.status_code"] == 200
    forwards = [s for s in receiver.named("forward") if s.attributes.get("outcome") == "200"]
    sent = [
        TraceParent.parse(r.headers["traceparent"]) for r in pods.requests if str(r.url).startswith("http://127.0.9.1")
    ]
    assert {(f.trace_id, f.span_id) for f in forwards} == {(t.trace_id, t.span_id) for t in sent if t is not None}
    assert len(sent) == 2  # each pod request got its own forward span's context
    route = next(s for s in receiver.named("route") if s.trace_id == first.trace_id)
    assert route.attributes["model"] == "tiny-sd"
    assert next(s for s in receiver.named("auth") if s.trace_id == first.trace_id).attributes["tenant"] == "team-a"
