"""The inference app in-process (httpx.ASGITransport) with a fake backend: no torch, no model."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from kubediffusion.imagemodel.tiny import SMOKE_TEST_MARKER
from kubediffusion.inference.app import create_app
from kubediffusion.inference.backend import ModelLoadError
from kubediffusion.inference.settings import InferenceSettings
from tests.support.asgi import HangingUpClient
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(30)
BASE = "http://inference.test"


@asynccontextmanager
async def serve(
    settings: InferenceSettings, loader: Callable[[InferenceSettings], Any], wait_ready: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    fatal: list[str] = []
    app = create_app(settings, loader, on_fatal=fatal.append)
    app.state.fatal = fatal
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, timeout=10) as client:
            if wait_ready:
                await poll(lambda: app.state.server.phase == "ready")
            yield client, app


async def poll(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def client(tmp_path: Path, backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings_for(tmp_path), lambda _: backend) as (http, _):
        yield http


def decode(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


async def test_generation_returns_openai_shape_with_images_of_the_requested_size(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "a cat", "n": 2, "size": "128x64"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert isinstance(payload["created"], int)
    assert payload["output_format"] == "png"
    assert "size" not in payload  # 128x64 is not one of OpenAI's response sizes
    assert [decode(item).size for item in payload["data"]] == [(128, 64), (128, 64)]
    assert [decode(item).format for item in payload["data"]] == ["PNG", "PNG"]


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_formats(client: httpx.AsyncClient, output_format: str, pil_format: str) -> None:
    response = await client.post(
        "/v1/images/generations", json={"prompt": "a", "output_format": output_format, "output_compression": 50}
    )
    assert response.status_code == 200
    assert decode(response.json()["data"][0]).format == pil_format


async def test_same_seed_gives_identical_bytes_and_seeds_count_up_per_image(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    first = (await client.post("/v1/images/generations", json={"prompt": "a", "seed": 5, "n": 2})).json()
    second = (await client.post("/v1/images/generations", json={"prompt": "a", "seed": 5, "n": 2})).json()
    assert first["data"] == second["data"]
    assert backend.calls[0][0].seeds == (5, 6)


async def test_without_seed_each_request_gets_fresh_seeds(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    await client.post("/v1/images/generations", json={"prompt": "a", "n": 2})
    await client.post("/v1/images/generations", json={"prompt": "a", "n": 2})
    first, second = backend.calls[0][0].seeds, backend.calls[1][0].seeds
    assert first != second
    assert first[1] == first[0] + 1


@pytest.mark.parametrize("model", [None, "tiny", "dall-e-2"])
async def test_model_may_be_null_the_name_or_an_alias(client: httpx.AsyncClient, model: str | None) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "a", "model": model})
    assert response.status_code == 200


async def test_unknown_model_is_404_with_openai_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "a", "model": "dall-e-3"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.json()["error"]["param"] == "model"


async def test_response_format_url_is_answered_with_b64_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={"prompt": "a", "response_format": "url"})
    assert response.status_code == 200
    assert set(response.json()["data"][0]) == {"b64_json"}


@pytest.mark.parametrize(
    ("content", "content_type", "param"),
    [
        (b'{"n": 1}', "application/json", "prompt"),
        (b'{"prompt": "a", "n": "2"}', "application/json", "n"),
        (b'{"prompt": "a", "size": "64x65"}', "application/json", "size"),
        (b'{"prompt": "a", "size": "512x512"}', "application/json", "size"),
        (b'{"prompt": "a", "bogus": true}', "application/json", "bogus"),
        (b'{"prompt": "a",', "application/json", None),
        (b"[]", "application/json", None),
        (b'{"prompt": "a"}', "text/plain", None),
    ],
)
async def test_client_mistakes_are_400_envelopes_never_422(
    client: httpx.AsyncClient, content: bytes, content_type: str, param: str | None
) -> None:
    response = await client.post("/v1/images/generations", content=content, headers={"content-type": content_type})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


async def test_unknown_route_and_wrong_method_use_the_envelope(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).json()["error"]["type"] == "invalid_request_error"
    response = await client.get("/v1/images/generations")
    assert response.status_code == 405
    assert "error" in response.json()


async def test_concurrent_compatible_requests_are_batched(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    responses = await asyncio.gather(
        *(client.post("/v1/images/generations", json={"prompt": f"p{i}", "seed": i}) for i in range(4))
    )
    assert all(response.status_code == 200 for response in responses)
    assert [len(call) for call in backend.calls] == [4]
    metrics = (await client.get("/metrics")).text
    assert 'kubediffusion_inference_batch_size_bucket{le="4.0"} 1.0' in metrics
    assert 'kubediffusion_inference_batch_size_bucket{le="3.0"} 0.0' in metrics
    assert "kubediffusion_inference_images_total 4.0" in metrics
    assert 'kubediffusion_inference_requests_total{outcome="success"} 4.0' in metrics
    assert "kubediffusion_inference_step_seconds_count 2.0" in metrics


async def test_full_queue_is_429_with_retry_after(tmp_path: Path, backend: FakeBackend) -> None:
    settings = settings_for(tmp_path, max_queue=2, max_batch_size=1, batch_window_ms=0)
    async with serve(settings, lambda _: backend) as (client, app):
        backend.gate.clear()
        post = lambda: client.post("/v1/images/generations", json={"prompt": "a"})  # noqa: E731
        running = asyncio.create_task(post())
        await poll(backend.running.is_set)
        queued = [asyncio.create_task(post()) for _ in range(2)]
        await poll(lambda: (app.state.server.phase == "ready") and _queued(app) == 2)
        rejected = await post()
        assert rejected.status_code == 429
        assert rejected.json()["error"]["code"] == "queue_full"
        assert int(rejected.headers["retry-after"]) >= 1
        health = await client.get("/health")  # the event loop answers while the batch runs
        assert health.status_code == 200
        backend.gate.set()
        assert [r.status_code for r in await asyncio.gather(running, *queued)] == [200, 200, 200]
        metrics = (await client.get("/metrics")).text
        assert 'kubediffusion_inference_requests_total{outcome="queue_full"} 1.0' in metrics


def _queued(app: Any) -> int:
    return int(app.state.server.batcher.queued_images)


async def test_readyz_is_503_until_loaded_and_warm_then_200(tmp_path: Path, backend: FakeBackend) -> None:
    release = threading.Event()

    def slow_loader(_: InferenceSettings) -> FakeBackend:
        assert release.wait(10)
        return backend

    async with serve(settings_for(tmp_path), slow_loader, wait_ready=False) as (client, app):
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["phase"] == "loading"
        readyz = await client.get("/readyz")
        assert readyz.status_code == 503
        assert readyz.json()["error"]["code"] == "model_not_ready"
        assert "retry-after" in readyz.headers
        early = await client.post("/v1/images/generations", json={"prompt": "a"})
        assert early.status_code == 503
        release.set()
        await poll(lambda: app.state.server.phase == "ready")
        assert (await client.get("/readyz")).status_code == 200
        assert len(backend.all_calls) == 1 and backend.calls == []  # the warm-up image
        assert backend.all_calls[0][0].params.steps <= 2


async def test_warmup_can_be_switched_off(tmp_path: Path, backend: FakeBackend) -> None:
    async with serve(settings_for(tmp_path, warmup=False), lambda _: backend) as (client, _):
        assert (await client.get("/readyz")).status_code == 200
        assert backend.all_calls == []


async def test_load_failure_reports_failed_and_calls_on_fatal(tmp_path: Path) -> None:
    def broken(_: InferenceSettings) -> FakeBackend:
        raise ModelLoadError("model directory /nope does not exist")

    async with serve(settings_for(tmp_path), broken, wait_ready=False) as (client, app):
        await poll(lambda: app.state.server.phase == "failed")
        assert app.state.fatal == ["model directory /nope does not exist"]
        for path in ("/readyz", "/health"):
            response = await client.get(path)
            assert response.status_code == 503
            assert "does not exist" in response.json()["error"]["message"]
        assert (await client.get("/info")).json()["error"] == "model directory /nope does not exist"


async def test_client_that_disconnects_while_queued_is_dropped(tmp_path: Path, backend: FakeBackend) -> None:
    settings = settings_for(tmp_path, max_batch_size=1, batch_window_ms=0)
    async with serve(settings, lambda _: backend) as (client, app):
        backend.gate.clear()
        running = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "first"}))
        await poll(backend.running.is_set)
        hanging = HangingUpClient(app, "/v1/images/generations", b'{"prompt": "gone"}', host="inference.test")
        call = hanging.start()
        await poll(lambda: _queued(app) == 1)
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert _queued(app) == 0
        backend.gate.set()
        assert (await running).status_code == 200
        assert [job.params.prompt for call_ in backend.all_calls for job in call_] == ["warm-up", "first"]
        metrics = (await client.get("/metrics")).text
        assert 'kubediffusion_inference_requests_total{outcome="disconnected"} 1.0' in metrics


async def test_models_lists_the_model_in_openai_shape(tmp_path: Path, backend: FakeBackend) -> None:
    (tmp_path / SMOKE_TEST_MARKER).write_text('{"smoke_test": true, "defaults": {"size": "64x64"}}')
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        payload = (await client.get("/v1/models")).json()
    assert payload["object"] == "list"
    (model,) = payload["data"]
    assert (model["id"], model["object"], model["owned_by"]) == ("tiny", "model", "kubediffusion")
    assert isinstance(model["created"], int)
    assert model["aliases"] == ["dall-e-2"]
    assert model["smoke_test"] is True and model["ready"] is True
    capabilities = ("generations", "edits", "variations", "inpainting", "streaming", "partial_images")
    assert model["supports"] == dict.fromkeys(capabilities, True)


async def test_info_reports_model_config_and_machine(client: httpx.AsyncClient) -> None:
    info = (await client.get("/info")).json()
    assert info["phase"] == "ready"
    assert (info["device"], info["dtype"], info["smoke_test"]) == ("cpu", "float32", False)
    assert info["defaults"]["size"] == "64x64"
    assert info["limits"]["maxSize"] == 256
    assert info["serving"]["maxBatchSize"] == 4
    system = info["system"]
    assert system["ramTotalBytes"] > 0 and system["ramAvailableBytes"] > 0
    assert system["cpuCount"] >= 1 and "cpuPercent" in system
    assert system["vramTotalBytes"] is None


async def test_tiny_model_marker_supplies_defaults_only_when_none_are_configured(
    tmp_path: Path, backend: FakeBackend
) -> None:
    (tmp_path / SMOKE_TEST_MARKER).write_text('{"smoke_test": true, "defaults": {"size": "128x128", "steps": 1}}')
    settings = InferenceSettings(model_dir=tmp_path, model_name="tiny")
    async with serve(settings, lambda _: backend) as (client, _):
        assert (await client.get("/info")).json()["defaults"]["size"] == "128x128"
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        assert (await client.get("/info")).json()["defaults"]["size"] == "64x64"


async def test_shutdown_closes_the_backend(tmp_path: Path, backend: FakeBackend) -> None:
    async with serve(settings_for(tmp_path), lambda _: backend):
        pass
    assert backend.closed


def test_defaults_from_the_environment_count_as_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubediffusion.inference.server import effective_defaults

    marker = {"smoke_test": True, "defaults": {"size": "64x64", "steps": 2}}
    monkeypatch.setenv("KD_INFERENCE_DEFAULTS", '{"size": "512x512"}')
    assert effective_defaults(InferenceSettings(model_dir=tmp_path), marker).size == "512x512"
    monkeypatch.delenv("KD_INFERENCE_DEFAULTS")
    assert effective_defaults(InferenceSettings(model_dir=tmp_path), marker).size == "64x64"
    assert effective_defaults(InferenceSettings(model_dir=tmp_path), None).size == "1024x1024"
