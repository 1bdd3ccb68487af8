"""Request ids: the client's X-Request-Id (when plausible) or a new one, sent to the pod, on every answer
(errors and pods' answers included: the router's id, one value), and in every log line of the request,
as text or JSON."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubediffusion.api.logformat import TEXT_FORMAT, JsonFormatter
from kubediffusion.router.logs import RequestIdFilter
from kubediffusion.router.requestctx import accepted_request_id
from tests.unit.router.conftest import model

GEN = "/v1/images/generations"
POD = "http://127.0.9.1:8000"
NEW_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the router's root handler writes (its filter and text format), for the test's duration."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(
    ("given", "accepted"),
    [
        ("req-1234", True),
        ("0f0e-ab:cd/ef+gh=@.x_y", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("line\nbreak", False),
        ("ünïcode", False),
        ("", False),
        ("<script>", False),
    ],
)
def test_only_plausible_ids_are_accepted(given: str, accepted: bool) -> None:
    assert (accepted_request_id(given) == given) is accepted


async def test_the_clients_id_goes_to_the_pod_and_comes_back(router: Any, pods: Any) -> None:
    async with router() as client:
        answer = await client.post(GEN, json={"prompt": "x"}, headers={"X-Request-Id": "client-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "client-42"
    assert pods.requests[0].headers["x-request-id"] == "client-42"


async def test_without_a_usable_id_the_router_makes_one_and_uses_it_everywhere(router: Any, pods: Any) -> None:
    async with router() as client:
        plain = await client.post(GEN, json={"prompt": "x"})
        junk = await client.post(GEN, json={"prompt": "x"}, headers={"X-Request-Id": "no spaces allowed"})
        health = await client.get("/health")
    for answer, sent in zip((plain, junk), pods.requests, strict=True):
        assert NEW_ID.fullmatch(answer.headers["x-request-id"])
        assert sent.headers["x-request-id"] == answer.headers["x-request-id"]
    assert plain.headers["x-request-id"] != junk.headers["x-request-id"]
    assert NEW_ID.fullmatch(health.headers["x-request-id"])


async def test_errors_and_a_pods_own_answers_carry_the_routers_id(router: Any, pods: Any) -> None:
    pods.behaviour[POD] = lambda request: httpx.Response(
        500, json={"error": {"message": "boom"}}, headers={"X-Request-Id": "the-pods-own"}
    )
    async with router() as client:
        failed = await client.post(GEN, json={"prompt": "x"}, headers={"X-Request-Id": "r-1"})
        missing = await client.post(GEN, json={"prompt": "x", "model": "nope"}, headers={"X-Request-Id": "r-2"})
        not_json = await client.post(GEN, content=b"{", headers={"X-Request-Id": "r-3"})
    assert failed.status_code == 500 and failed.headers.get_list("x-request-id") == ["r-1"]
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-2"
    assert not_json.status_code == 400 and not_json.headers["x-request-id"] == "r-3"


async def test_every_log_line_of_a_request_names_it(router: Any, pods: Any, log_lines: io.StringIO) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    pods.behaviour[POD] = unreachable
    pods.behaviour["http://127.0.9.2:8000"] = unreachable
    async with router([model(endpoints=(POD, "http://127.0.9.2:8000"))]) as client:
        log_lines.truncate(0)
        answer = await client.post(GEN, json={"prompt": "x"}, headers={"X-Request-Id": "trace-me-7"})
        other = await client.post(GEN, json={"prompt": "x"})
    lines = [line for line in log_lines.getvalue().splitlines() if "pod http://" in line]
    assert answer.status_code == other.status_code == 503
    mine = [line for line in lines if "[trace-me-7]" in line]
    theirs = [line for line in lines if f"[{other.headers['x-request-id']}]" in line]
    assert len(mine) == 2 and len(theirs) == 2 and len(lines) == 4  # one per pod tried, each with its request


def test_json_lines_carry_the_request_and_trace_ids() -> None:
    record = logging.LogRecord("kubediffusion.router.x", logging.WARNING, __file__, 1, "pod %s failed", ("p",), None)
    record.request_id, record.trace_id = "r-9", "0af7651916cd43dd8448eb211c80319c"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "pod p failed" and entry["level"] == "WARNING"
    assert entry["request_id"] == "r-9" and entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["logger"] == "kubediffusion.router.x" and entry["time"].endswith("+00:00")
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "startup", (), None)
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-" and outside.trace_id == "-"  # type: ignore[attr-defined]
