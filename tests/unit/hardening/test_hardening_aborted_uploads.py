"""A client that drops mid-upload: one info line (no traceback, no "unhandled error") and a disconnect
in the metrics, never an error, in both the router and the inference server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from kubediffusion.inference.app import create_app as create_inference_app
from kubediffusion.router.app import create_app as create_router_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings
from tests.unit.hardening.asgi_upload import HANG_UP, chunk, upload
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(30)
LOGGERS = ("kubediffusion", "uvicorn", "fastapi", "starlette")


@asynccontextmanager
async def running(app: Any, ready: Callable[[], bool] = lambda: True) -> AsyncIterator[Any]:
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 5
        while not ready():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        yield app


def router_app(tmp_path: Path, pod_requests: list[httpx.Request]) -> Any:
    settings = RouterSettings(
        discovery="static", storage_dir=tmp_path / "images", signing_key="s" * 32, global_rate_limit_rps=0
    )
    table = RoutingTable([ModelEntry(name="tiny", endpoints=("http://127.0.9.1:8000",))])
    return create_router_app(
        settings, discovery=StaticDiscovery(table=table), transport=httpx.MockTransport(pod_requests.append)
    )


def one_info_line(caplog: pytest.LogCaptureFixture) -> str:
    records = [r for r in caplog.records if r.name.startswith(LOGGERS)]
    assert len(records) == 1, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]
    (record,) = records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "unhandled" not in record.getMessage() and "Traceback" not in caplog.text
    return record.getMessage()


async def test_router_logs_an_aborted_upload_once_and_counts_it_as_499(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pod_requests: list[httpx.Request] = []
    async with running(router_app(tmp_path, pod_requests)) as app:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            status, _, _ = await upload(app, [chunk(b'{"prompt": "a ligh'), HANG_UP], client=("198.51.100.7", 1))
        metrics = generate_latest(app.state.router.metrics.registry).decode()
    assert status == 499 and pod_requests == []
    assert one_info_line(caplog) == "client 198.51.100.7 disconnected while sending POST /v1/images/generations"
    assert 'kubediffusion_router_requests_total{code="499",model="unknown"} 1.0' in metrics


async def test_inference_logs_an_aborted_upload_once_and_counts_it_as_disconnected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app = create_inference_app(settings_for(tmp_path, warmup=False), lambda _: backend)
    async with running(app, ready=lambda: app.state.server.phase == "ready"):
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            status, _, _ = await upload(app, [chunk(b'{"prompt": "a ligh'), 0.01, HANG_UP])
        metrics = app.state.server.metrics.render().decode()
    assert status == 499 and backend.calls == []
    assert one_info_line(caplog) == "client 127.0.0.1 disconnected while sending POST /v1/images/generations"
    assert 'kubediffusion_inference_requests_total{outcome="disconnected"} 1.0' in metrics
    assert 'kubediffusion_inference_requests_total{outcome="error"} 0.0' in metrics
