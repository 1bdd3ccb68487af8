"""Request ids at the model pod: the router's X-Request-Id is accepted (or replaced), echoed, and in every
log line written for the request, the lines the worker thread writes while running a batch included
(those name every request of the batch); text and JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image

from kubediffusion.api.logformat import JsonFormatter, formatter
from kubediffusion.api.tracecontext import accepted_request_id
from kubediffusion.inference.backend import ImageJob, StepCallback
from kubediffusion.inference.logs import InferenceLogHandler, RequestIdFilter, configure_logging
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class LoggingBackend(FakeBackend):
    """Logs one line from the pipeline thread per call, as diffusers or torch might."""

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        logging.getLogger("tests.pipeline").warning("generating %d job(s)", len(jobs))
        return super().generate(jobs, on_step)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter("text"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(
    ("given", "accepted"),
    [("abc-123", True), ("a" * 128, True), ("tenant/a:b@c+d=e.f_g", True), ("", False), ("a" * 129, False),
     ("bad id", False), ("x\r\ninjected: 1", False), ("é", False)],
)  # fmt: skip
def test_only_plausible_ids_are_accepted(given: str, accepted: bool) -> None:
    assert (accepted_request_id(given) == given) is accepted


async def test_the_routers_id_is_echoed_and_a_missing_or_bad_one_replaced(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path), lambda _: FakeBackend()) as (client, _):
        given = await client.post(GENERATE, json={"prompt": "a"}, headers={"X-Request-Id": "router-id-1"})
        missing = await client.post(GENERATE, json={"prompt": "a"})
        bad = await client.post(GENERATE, json={"prompt": "a"}, headers={"X-Request-Id": "no spaces allowed"})
        error = await client.post(GENERATE, json={"prompt": ""}, headers={"X-Request-Id": "router-id-2"})
        health = await client.get("/health", headers={"X-Request-Id": "probe"})
    assert given.status_code == missing.status_code == bad.status_code == 200
    assert given.headers["x-request-id"] == "router-id-1"
    made = [missing.headers["x-request-id"], bad.headers["x-request-id"]]
    assert all(len(made_id) == 32 and int(made_id, 16) >= 0 for made_id in made) and made[0] != made[1]
    assert error.status_code == 400 and error.headers["x-request-id"] == "router-id-2"
    assert health.headers["x-request-id"] == "probe"


async def test_every_line_of_a_request_names_it_and_a_batchs_lines_name_all_its_requests(
    tmp_path: Path, log_lines: io.StringIO
) -> None:
    backend = LoggingBackend()
    async with serve(settings_for(tmp_path, batch_window_ms=0), lambda _: backend) as (client, app):
        backend.gate.clear()
        first = asyncio.create_task(client.post(GENERATE, json={"prompt": "a"}, headers={"X-Request-Id": "req-0"}))
        await poll(backend.running.is_set)  # req-0 runs alone; the next two queue behind it, then share a batch
        rest = [
            asyncio.create_task(client.post(GENERATE, json={"prompt": "a"}, headers={"X-Request-Id": f"req-{i}"}))
            for i in (1, 2)
        ]
        await poll(lambda: app.state.server.batcher.queued_requests == 2)
        backend.gate.set()
        answers = await asyncio.gather(first, *rest)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    lines = log_lines.getvalue().splitlines()
    pipeline = [line for line in lines if "tests.pipeline" in line]
    assert any("[req-0]: generating 1 job(s)" in line for line in pipeline), lines
    assert any("[req-1,req-2]: generating 2 job(s)" in line for line in pipeline), lines
    for request_id in ("req-0", "req-1", "req-2"):
        answered = [line for line in lines if f"[{request_id}]: POST {GENERATE} 200" in line]
        assert len(answered) == 1 and "compute=" in answered[0], lines
    warm_up = [line for line in lines if "warm-up batch" in line]
    assert warm_up and all("[-]" in line for line in warm_up)  # outside any request


async def test_json_lines_carry_the_request_id_and_the_routers_trace_id(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        async with serve(settings_for(tmp_path), lambda _: LoggingBackend()) as (client, _):
            headers = {"X-Request-Id": "json-1", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
            assert (await client.post(GENERATE, json={"prompt": "a"}, headers=headers)).status_code == 200
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [entry for entry in entries if entry["request_id"] == "json-1"]
    assert {entry["logger"] for entry in mine} >= {"tests.pipeline", "kubediffusion.inference.requestctx"}
    assert all(entry["trace_id"] == TRACE for entry in mine)  # tracing off: the router's trace id
    assert {"time", "level", "logger", "message", "request_id", "trace_id"} <= set(mine[0])


def test_configure_logging_installs_one_handler_and_replaces_it() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging("info", "json")
        configure_logging("debug", "text")
        ours = [h for h in root.handlers if isinstance(h, InferenceLogHandler)]
        assert len(ours) == 1 and not isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
