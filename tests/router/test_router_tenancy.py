"""Tenancy and observability with real processes: the official openai client -> `kubediffusion router`
(a tenants file, JSON logs, spans over OTLP/HTTP) -> two tiny-model inference processes and a mock pod.

Two tenants with their own models (one known to the router only by its key's SHA-256 digest), a tenant
with a 2-images-a-day quota, one with its own rate limit, one whose usage is added up, an admin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubediffusion.router.tracing import TraceParent
from kubediffusion.router.usagebook import seconds_to_next_day, utc_day
from tests.router.tenancy_stack import (
    A_KEY,
    ADMIN_KEY,
    B_DIGEST,
    B_KEY,
    COMPUTE_SECONDS,
    GONE_MODEL,
    LIMITED_KEY,
    MOCK_MODEL,
    QUOTA_KEY,
    USAGE_KEY,
    TenancyStack,
    tenancy_stack,
    tenants_yaml,
)
from tests.support.waiting import wait_for

pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra")
pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto (dev extra)")

pytestmark = [pytest.mark.inference, pytest.mark.timeout(600)]

GEN = "/v1/images/generations"
EXTRA = {"num_inference_steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def tenancy(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenancyStack]:
    with tenancy_stack(tiny_model, tmp_path_factory.mktemp("tenancy")) as stack:
        yield stack


def api(stack: TenancyStack, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, timeout=120, **{"max_retries": 0, **kwargs})


def post(stack: TenancyStack, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}{GEN}", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=120
    )


def metric(stack: TenancyStack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_each_tenant_lists_and_uses_only_its_models(tenancy: TenancyStack) -> None:
    assert sorted(m.id for m in api(tenancy, A_KEY).models.list()) == [GONE_MODEL, MOCK_MODEL, "tiny-sd"]
    assert [m.id for m in api(tenancy, B_KEY).models.list()] == ["tiny-xl"]
    b = api(tenancy, B_KEY).images.generate(model="tiny-xl", prompt="a boat", size="64x64", extra_body=EXTRA)
    assert b.data and b.data[0].b64_json
    with pytest.raises(openai.NotFoundError) as hidden:
        api(tenancy, A_KEY).images.generate(model="tiny-xl", prompt="a boat", size="64x64")
    assert hidden.value.code == "model_not_found"
    hidden_raw = post(tenancy, A_KEY, {"prompt": "x", "model": "tiny-xl"})
    missing_raw = post(tenancy, A_KEY, {"prompt": "x", "model": "tiny-xx"})
    assert hidden_raw.status_code == missing_raw.status_code == 404
    assert hidden_raw.text.replace("tiny-xl", "M") == missing_raw.text.replace("tiny-xx", "M")


def test_a_sha256_key_works_and_neither_it_nor_its_digest_is_ever_logged(tenancy: TenancyStack) -> None:
    assert post(tenancy, B_KEY, {"prompt": "x", "model": "tiny-xl", **EXTRA}).status_code == 200
    assert post(tenancy, B_DIGEST, {"prompt": "x", "model": "tiny-xl"}).status_code == 401
    text = tenancy.log.read_text(errors="replace")
    assert B_KEY not in text and B_DIGEST not in text and A_KEY not in text


def test_the_third_image_of_a_two_a_day_quota_is_insufficient_quota_until_midnight(tenancy: TenancyStack) -> None:
    if seconds_to_next_day(time.time()) < 120:
        pytest.skip("too close to midnight UTC: the quota's day would change during the test")
    client = api(tenancy, QUOTA_KEY, max_retries=2)  # the SDK's retries must not be spent on it
    for model in ("tiny-sd", "tiny-xl"):  # one quota across the tenant's models
        assert client.images.generate(model=model, prompt="x", size="64x64", extra_body=EXTRA).data
    with pytest.raises(openai.RateLimitError) as refused:
        client.images.generate(model="tiny-sd", prompt="x", size="64x64", extra_body=EXTRA)
    assert refused.value.code == refused.value.type == "insufficient_quota"
    retry_after = int(refused.value.response.headers["retry-after"])
    assert abs(retry_after - seconds_to_next_day(time.time())) <= 10
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert metric(tenancy, "kubediffusion_router_quota_refusals_total", tenant="team-quota") == 1  # not retried


def test_a_tenants_own_rate_limit(tenancy: TenancyStack) -> None:
    codes = [post(tenancy, LIMITED_KEY, {"prompt": "x", "model": MOCK_MODEL}) for _ in range(3)]  # burst 2
    assert [answer.status_code for answer in codes] == [200, 200, 429]
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded" and codes[2].headers["retry-after"] == "2"
    assert post(tenancy, A_KEY, {"prompt": "x", "model": MOCK_MODEL}).status_code == 200  # its own bucket


def test_usage_counters_and_v1_usage_add_up_failed_requests_apart(tenancy: TenancyStack) -> None:
    client = api(tenancy, USAGE_KEY)
    assert len(client.images.generate(model="tiny-sd", prompt="x", n=2, size="64x64", extra_body=EXTRA).data or []) == 2
    assert len(client.images.generate(model=MOCK_MODEL, prompt="x", size="64x64").data or []) == 1
    assert post(tenancy, USAGE_KEY, {"prompt": "fail", "model": MOCK_MODEL}).status_code == 500
    usage = "kubediffusion_router_usage_{}_total"
    tiny, mock = {"tenant": "team-usage", "model": "tiny-sd"}, {"tenant": "team-usage", "model": MOCK_MODEL}
    assert (
        metric(tenancy, usage.format("requests"), **tiny) == 1 and metric(tenancy, usage.format("images"), **tiny) == 2
    )
    assert metric(tenancy, usage.format("megapixels"), **tiny) == pytest.approx(2 * 64 * 64 / 1e6)
    assert metric(tenancy, usage.format("denoising_steps"), **tiny) == 4
    assert (
        metric(tenancy, usage.format("requests"), **mock) == 1 and metric(tenancy, usage.format("images"), **mock) == 1
    )
    assert metric(tenancy, usage.format("gpu_seconds"), **mock) == pytest.approx(float(COMPUTE_SECONDS))
    assert metric(tenancy, usage.format("failed_requests"), **mock, code="500") == 1
    today = utc_day(time.time()).isoformat()
    answer = httpx.get(
        f"{tenancy.url}/v1/usage",
        params={"tenant": "team-usage", "from": today},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 200
    body = answer.json()
    rows = {row["model"]: row for row in body["data"]}
    assert (rows["tiny-sd"]["requests"], rows["tiny-sd"]["images"], rows["tiny-sd"]["failed_requests"]) == (1, 2, 0)
    assert (rows[MOCK_MODEL]["requests"], rows[MOCK_MODEL]["images"], rows[MOCK_MODEL]["failed_requests"]) == (1, 1, 1)
    assert rows[MOCK_MODEL]["gpu_seconds"] == pytest.approx(0.75)
    assert body["totals"] == [{**body["totals"][0], "tenant": "team-usage", "images": 3, "requests": 2}]
    assert body["scope"] == "replica"
    not_admin = httpx.get(f"{tenancy.url}/v1/usage", headers={"Authorization": f"Bearer {USAGE_KEY}"}, timeout=10)
    assert not_admin.status_code == 403


def test_request_ids_reach_the_pod_and_the_answer_and_name_every_log_line(tenancy: TenancyStack) -> None:
    served = post(tenancy, A_KEY, {"prompt": "x", "model": MOCK_MODEL}, **{"X-Request-Id": "tenancy-req-1"})
    assert served.status_code == 200 and served.headers["x-request-id"] == "tenancy-req-1"
    assert tenancy.pod.headers[-1]["x-request-id"] == "tenancy-req-1"
    failed = post(tenancy, A_KEY, {"prompt": "x", "model": GONE_MODEL}, **{"X-Request-Id": "tenancy-req-2"})
    assert failed.status_code == 503 and failed.headers["x-request-id"] == "tenancy-req-2"
    generated = post(tenancy, A_KEY, {"prompt": "x", "model": GONE_MODEL})
    entries = wait_for(
        lambda: [e for e in tenancy.log_entries() if GONE_MODEL in str(e.get("message"))],
        timeout=10,
        message="the router's log lines about the unreachable pod",
    )
    assert {e["request_id"] for e in entries} == {"tenancy-req-2", generated.headers["x-request-id"]}
    for entry in entries:
        assert set(entry) >= {"time", "level", "logger", "message", "request_id", "trace_id"}
    request_log = [e for e in tenancy.log_entries() if e.get("request_id") == "tenancy-req-1"]
    assert [e["message"] for e in request_log] == [
        f"POST {GEN} 200 model={MOCK_MODEL} tenant=team-a images=1 {str(request_log[0]['message']).rsplit(' ', 1)[1]}"
    ]  # one request-log line for a request served without a word otherwise


def test_the_clients_traceparent_reaches_the_pod_and_the_spans_share_its_trace(tenancy: TenancyStack) -> None:
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    answer = post(tenancy, A_KEY, {"prompt": "x", "model": MOCK_MODEL}, traceparent=f"00-{trace_id}-{client_span}-01")
    assert answer.status_code == 200
    sent = TraceParent.parse(tenancy.pod.headers[-1]["traceparent"])
    assert sent is not None and sent.trace_id == trace_id and sent.span_id != client_span
    spans = wait_for(
        lambda: (found := [s for s in tenancy.spans.spans if s.trace_id == trace_id]) and len(found) >= 4 and found,
        timeout=20,
        message="server, auth, route and forward spans",
    )
    server = next(s for s in spans if s.name == f"POST {GEN}")
    assert server.parent_span_id == client_span and server.service == "kubediffusion-router"
    children = {s.name: s for s in spans if s.parent_span_id == server.span_id}
    assert {"auth", "route", "forward"} <= set(children)
    assert children["forward"].span_id == sent.span_id  # the pod's parent is the router's forward span


def test_an_edited_tenants_file_is_picked_up_without_a_restart(tenancy: TenancyStack) -> None:
    tenancy.tenants.write_text(tenants_yaml(a_models=("tiny-*", "mock-*")))
    try:
        wait_for(
            lambda: "tiny-xl" in [m.id for m in api(tenancy, A_KEY).models.list()],
            timeout=20,
            message="team-a to see tiny-xl",
        )
    finally:
        tenancy.tenants.write_text(tenants_yaml())
