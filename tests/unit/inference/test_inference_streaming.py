"""Streamed generations and edits through the inference app with a fake backend: events in order and in
OpenAI's shapes, errors before the stream as JSON, during it as an error event, keep-alive comments,
and a client that hangs up leaves the queue."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai._models import validate_type
from openai.types import ImageEditStreamEvent, ImageGenStreamEvent
from PIL import Image

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference import streaming
from tests.support.asgi import HangingUpClient
from tests.unit.api.sample_images import form, png
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"


def events_of(response: httpx.Response) -> list[tuple[str | None, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    return [(event.event, event.json()) for event in SSEDecoder().feed(response.content)]


def image_of(event: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(event["b64_json"])))


async def test_generation_stream_sends_partials_then_completed_in_openai_shapes(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        request = {
            "prompt": "a",
            "stream": True,
            "partial_images": 2,
            "n": 2,
            "size": "128x64",
            "output_format": "jpeg",
        }
        events = events_of(await client.post(GENERATE, json=request))
        metrics = (await client.get("/metrics")).text
    kinds = [name for name, _ in events]
    assert kinds == ["image_generation.partial_image"] * 4 + ["image_generation.completed"] * 2
    assert [data["partial_image_index"] for _, data in events[:4]] == [0, 0, 1, 1]
    for name, data in events:
        assert data["type"] == name
        validate_type(type_=ImageGenStreamEvent, value=data)  # as the openai client does in strict mode
        image = image_of(data)
        assert (image.format, image.size) == ("JPEG", (128, 64))  # previews are scaled to the output size
    assert image_of(events[2][1]).convert("L").getpixel((5, 5)) > image_of(events[0][1]).convert("L").getpixel((5, 5))
    assert 'kubediffusion_inference_requests_total{outcome="success"} 1.0' in metrics


async def test_edit_stream_uses_the_edit_events_and_zero_partials_is_one_event(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        body, content_type = form({"prompt": "p", "stream": "true", "partial_images": "1"}, [("image", png())])
        streamed = events_of(
            await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
        )
        plain = events_of(await client.post(GENERATE, json={"prompt": "a", "stream": True}))
    assert [name for name, _ in streamed] == ["image_edit.partial_image", "image_edit.completed"]
    for _, data in streamed:
        validate_type(type_=ImageEditStreamEvent, value=data)
    assert [name for name, _ in plain] == ["image_generation.completed"]


async def test_a_full_queue_or_a_bad_request_is_json_before_any_event(tmp_path: Path) -> None:
    backend = FakeBackend()
    settings = settings_for(tmp_path, max_batch_size=1, max_queue=1, batch_window_ms=0)
    async with serve(settings, lambda _: backend) as (client, app):
        bad = await client.post(GENERATE, json={"prompt": "a", "stream": True, "partial_images": 9})
        backend.gate.clear()
        running = asyncio.create_task(client.post(GENERATE, json={"prompt": "run"}))
        await poll(backend.running.is_set)
        queued = asyncio.create_task(client.post(GENERATE, json={"prompt": "queued"}))
        await poll(lambda: app.state.server.batcher.queued_images == 1)
        full = await client.post(GENERATE, json={"prompt": "a", "stream": True})
        backend.gate.set()
        await asyncio.gather(running, queued)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "partial_images")
    assert full.status_code == 429 and full.headers["content-type"] == "application/json"
    assert full.json()["error"]["code"] == "queue_full" and "retry-after" in full.headers


async def test_a_failed_batch_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        backend.generate = _failing  # type: ignore[method-assign]
        events = events_of(await client.post(GENERATE, json={"prompt": "a", "stream": True}))
        metrics = (await client.get("/metrics")).text
    ((name, data),) = events
    assert name == "error" and data["error"]["type"] == "server_error"
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert 'kubediffusion_inference_requests_total{outcome="error"} 1.0' in metrics


def _failing(*_: Any, **__: Any) -> Any:
    raise RuntimeError("CUDA out of memory")


async def test_a_waiting_stream_sends_keep_alive_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "KEEPALIVE_INTERVAL_S", 0.05)
    backend = FakeBackend()
    async with serve(settings_for(tmp_path), lambda _: backend) as (client, _):
        backend.gate.clear()
        response = asyncio.create_task(client.post(GENERATE, json={"prompt": "a", "stream": True}))
        await poll(backend.running.is_set)
        await asyncio.sleep(0.3)
        backend.gate.set()
        body = (await response).content
    assert body.startswith(b": keep-alive\n\n") and body.count(b": keep-alive") >= 2
    assert [event.event for event in SSEDecoder().feed(body)] == ["image_generation.completed"]


async def test_a_streamed_client_that_hangs_up_while_queued_is_dropped(tmp_path: Path) -> None:
    backend = FakeBackend()
    settings = settings_for(tmp_path, max_batch_size=1, batch_window_ms=0)
    async with serve(settings, lambda _: backend) as (client, app):
        backend.gate.clear()
        running = asyncio.create_task(client.post(GENERATE, json={"prompt": "first"}))
        await poll(backend.running.is_set)
        body = json.dumps({"prompt": "gone", "stream": True, "partial_images": 2}).encode()
        hanging = HangingUpClient(app, GENERATE, body, host="inference.test")
        call = hanging.start()
        await poll(lambda: app.state.server.batcher.queued_images == 1)
        await poll(lambda: any(m["type"] == "http.response.start" for m in hanging.sent))  # the stream started
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert app.state.server.batcher.queued_images == 0
        backend.gate.set()
        assert (await running).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert [job.params.prompt for call_ in backend.calls for job in call_] == ["first"]
    assert 'kubediffusion_inference_requests_total{outcome="disconnected"} 1.0' in metrics
