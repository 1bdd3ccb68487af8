"""Helpers for the real-pipeline tests: settings for the tiny model and the app served in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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
