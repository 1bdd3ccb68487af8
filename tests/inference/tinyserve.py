"""Helpers for the real-pipeline tests: settings for the tiny model, the app served in-process or by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings

BASE = "http://inference.test"


def tiny_settings(model_dir: Path, **overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "model_dir": model_dir,
        "model_name": "tiny",
        "dtype": "float32",
        "device": "cpu",
        "batch_window_ms": 50,
        "defaults": {"size": "64x64", "steps": 2, "guidance": 5.0},
        "limits": {"minSize": 64, "maxSize": 256},
    }
    values.update(overrides)
    return InferenceSettings(**values)


async def poll(predicate: Callable[[], bool], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def serve(
    settings: InferenceSettings, loader: Any = None, wait_ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings, loader, on_fatal=lambda message: None)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE, timeout=120) as client,
    ):
        if wait_ready:
            await poll(lambda: app.state.server.phase in ("ready", "failed"))
            assert app.state.server.phase == "ready", app.state.server.error
        yield client, app


@contextmanager
def serve_http(settings: InferenceSettings) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread (real sockets, real streaming):
    yields its base URL once ready; stopped on exit."""
    import uvicorn

    app = create_app(settings, on_fatal=lambda message: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tiny-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not become ready"
            assert app.state.server.phase != "failed", app.state.server.error
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
