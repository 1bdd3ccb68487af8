"""The inference server guards its own edge (not only behind the router): a body-size limit, a body
read timeout, and text a tokenizer cannot take refused before it reaches the batch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings, settings_from_cli
from tests.unit.hardening.asgi_upload import chunk, upload
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def serving(settings: InferenceSettings, backend: FakeBackend) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings, lambda _: backend)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 5
        while app.state.server.phase != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference.test") as client:
            yield app, client


def error_of(response: httpx.Response | bytes) -> dict[str, Any]:
    payload = json.loads(response.content if isinstance(response, httpx.Response) else response)
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
    return dict(payload["error"])


async def test_a_body_over_the_servers_own_limit_is_413(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serving(settings_for(tmp_path, max_body_bytes=2048, warmup=False), backend) as (_, client):
        declared = await client.post("/v1/images/generations", json={"prompt": "a", "user": "u" * 3000})

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies as it streams
            yield b'{"prompt": "a", "user": "'
            for _ in range(3):
                yield b"u" * 1000
            yield b'"}'

        streamed = await client.post(
            "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"}
        )
        fits = await client.post("/v1/images/generations", json={"prompt": "a", "user": "u" * 1900})
    assert declared.status_code == streamed.status_code == 413
    assert error_of(declared)["code"] == error_of(streamed)["code"] == "request_too_large"
    assert fits.status_code == 200 and len(backend.calls) == 1


async def test_a_stalled_body_is_408_and_the_connection_is_closed(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serving(settings_for(tmp_path, body_read_timeout=0.2, warmup=False), backend) as (app, _):
        status, headers, body = await upload(app, [chunk(b'{"prompt": "a')])  # then nothing
        metrics = app.state.server.metrics.render().decode()
    assert status == 408 and headers[b"connection"] == b"close"
    assert error_of(body)["code"] == "request_timeout"
    assert backend.calls == []
    assert 'kubediffusion_inference_requests_total{outcome="invalid"} 1.0' in metrics


async def test_an_unpaired_surrogate_never_reaches_the_batch(tmp_path: Path) -> None:
    """Regression (the fuzz): the real CLIP tokenizer raises TypeError on one, failing the whole batch."""
    backend = FakeBackend()
    async with serving(settings_for(tmp_path, warmup=False), backend) as (_, client):
        raw = b'{"prompt": "a", "negative_prompt": "\\ud800"}'
        response = await client.post(
            "/v1/images/generations", content=raw, headers={"content-type": "application/json"}
        )
        model = await client.post(
            "/v1/images/generations",
            content=b'{"prompt": "a", "model": "\\udfff"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400 and error_of(response)["param"] == "negative_prompt"
    assert model.status_code == 400 and error_of(model)["param"] == "model"  # was a 500: the 404 could not be encoded
    assert backend.calls == []


def test_limits_and_timeouts_are_settings_with_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_BODY_BYTES", "BODY_READ_TIMEOUT", "HEADER_READ_TIMEOUT"):
        monkeypatch.delenv(f"KD_INFERENCE_{name}", raising=False)
    defaults = InferenceSettings()
    assert (defaults.max_body_bytes, defaults.body_read_timeout, defaults.header_read_timeout) == (1_048_576, 30, 10)
    flags = settings_from_cli(["--max-body-bytes", "4096", "--body-read-timeout", "5", "--header-read-timeout", "2.5"])
    assert (flags.max_body_bytes, flags.body_read_timeout, flags.header_read_timeout) == (4096, 5, 2.5)
    monkeypatch.setenv("KD_INFERENCE_MAX_BODY_BYTES", "8192")
    assert InferenceSettings().max_body_bytes == 8192
    for bad in (["--max-body-bytes", "10"], ["--body-read-timeout", "0"], ["--header-read-timeout", "-1"]):
        with pytest.raises(ValueError):
            settings_from_cli(bad)


def test_main_serves_with_the_header_deadline_and_without_uvicorns_proxy_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubediffusion.api.headertimeout import HeaderTimeoutMixin
    from kubediffusion.inference import main as inference_main

    configs: list[Any] = []

    class NotServing:
        def __init__(self, config: Any) -> None:
            configs.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(inference_main, "check_model_dir", lambda _: None)
    monkeypatch.setattr(inference_main.uvicorn, "Server", NotServing)
    assert inference_main.main(["--model-dir", str(tmp_path), "--header-read-timeout", "4"]) == 0
    (config,) = configs
    assert isinstance(config.http, type) and issubclass(config.http, HeaderTimeoutMixin)
    assert config.http.header_timeout == 4
    assert config.proxy_headers is False
