"""The router is served on uvloop and httptools (dependencies since they measured faster: docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kubediffusion.api.headertimeout import HeaderTimeoutMixin
from kubediffusion.router import main as router_main


def test_main_serves_on_uvloop_with_the_httptools_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("- {name: tiny, endpoints: ['http://127.0.0.1:9']}\n")
    monkeypatch.setenv("KD_ROUTER_SIGNING_KEY", "k" * 32)
    monkeypatch.setenv("KD_ROUTER_STORAGE_DIR", str(tmp_path / "images"))
    served: dict[str, object] = {}
    monkeypatch.setattr(router_main.uvicorn, "run", lambda app, **options: served.update(options))
    assert router_main.main(["--static-config", str(config)]) == 0
    protocol = served["http"]
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)
    assert issubclass(protocol, HeaderTimeoutMixin)  # the fast parser keeps the header deadline
    loop_factory = uvicorn.Config(app=None, loop=served["loop"]).get_loop_factory()  # type: ignore[arg-type]
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_without_uvloop_the_router_falls_back_to_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_main.importlib.util, "find_spec", lambda name: None)
    assert router_main.event_loop() == "asyncio"
    loop_factory = uvicorn.Config(app=None, loop=router_main.event_loop()).get_loop_factory()  # type: ignore[arg-type]
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
