"""Router unit-test fixtures: the app in-process (ASGI transport) with a fake upstream (MockTransport)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.api.multipart import parse_multipart
from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
BASE = "http://router.test"
IMAGES = ("image", "image[]")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """``kubediffusion router``'s main() installs a root handler whose filter stamps every record with the
    router's request id ("-" here): left behind, it would stamp the next tests' records (the model
    server's log tests) before their own filter runs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakePods:
    """Upstream pods behind httpx.MockTransport: records requests, answers by a per-endpoint script."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.behaviour: dict[str, Callable[[httpx.Request], httpx.Response]] = {}

    def ok(self, request: httpx.Request) -> httpx.Response:
        if request.headers["content-type"].startswith("multipart/form-data"):
            parts = parse_multipart(request.content, request.headers["content-type"])
            n_field = next((part.data for part in parts if part.name == "n"), b"")
            n = int(n_field or 1) * sum(1 for part in parts if part.name in IMAGES)
        else:
            n = json.loads(request.content).get("n") or 1
        payload = {
            "created": 1,
            "data": [{"b64_json": base64.b64encode(PNG).decode()} for _ in range(n)],
            "output_format": "png",
        }
        return httpx.Response(200, json=payload)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        return self.behaviour.get(base, self.ok)(request)

    def hits(self, base: str | None = None) -> int:
        return sum(1 for r in self.requests if base is None or str(r.url).startswith(base))


@pytest.fixture
def pods() -> FakePods:
    return FakePods()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def model(name: str = "tiny", endpoints: tuple[str, ...] = ("http://127.0.9.1:8000",), **kwargs: Any) -> ModelEntry:
    return ModelEntry(name=name, endpoints=endpoints, **kwargs)


RouterFactory = Callable[..., Any]


@pytest.fixture
def router(tmp_path: Path, pods: FakePods, clock: FakeClock) -> RouterFactory:
    """``async with router(models, **settings) as client`` -> an httpx client talking to the app (``discovery``
    and ``scaler`` replace the static table and the waker's API server; ``wall_clock``, ``ledger`` and
    ``tracer`` the app's)."""

    @asynccontextmanager
    async def make(
        models: list[ModelEntry] | None = None,
        *,
        discovery: Any = None,
        scaler: Any = None,
        wall_clock: Callable[[], float] | None = None,
        ledger: Any = None,
        tracer: Any = None,
        **overrides: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        values: dict[str, Any] = dict(
            discovery="static",
            storage_dir=tmp_path / "images",
            signing_key="s" * 32,
            public_base_url=BASE,
            global_rate_limit_rps=0,
        )
        values.update(overrides)
        settings = RouterSettings(**values)
        if discovery is None:
            discovery = StaticDiscovery(table=RoutingTable(models if models is not None else [model()]))
        extra: dict[str, Any] = {"ledger": ledger, "tracer": tracer}
        if wall_clock is not None:
            extra["wall_clock"] = wall_clock
        app = create_app(
            settings,
            discovery=discovery,
            transport=httpx.MockTransport(pods.handler),
            scaler=scaler,
            clock=clock,
            **extra,
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
        ):
            client.app = app  # type: ignore[attr-defined]
            yield client

    return make
