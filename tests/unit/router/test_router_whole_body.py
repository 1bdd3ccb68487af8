"""How a pod's answer reaches the client: whole (one write) when it is small, of known length and not
events; chunk by chunk otherwise; and images decoded off the event loop."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from kubediffusion.router import delivery
from kubediffusion.router.relay import WHOLE_BODY_BYTES
from tests.unit.router.conftest import PNG
from tests.unit.router.test_router_app import A, assert_envelope

GEN = "/v1/images/generations"
ERROR = json.dumps({"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}}).encode()


class Chunks(httpx.AsyncByteStream):
    """A pod's body arriving in pieces; ``broken`` raises after them, as a pod that dies mid-answer."""

    def __init__(self, chunks: list[bytes], *, broken: bool = False) -> None:
        self.chunks = chunks
        self.broken = broken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.broken:
            raise httpx.ReadError("connection reset by the pod")


def answer(status: int, chunks: list[bytes], *, length: int | None, content_type: str = "application/json", **kw: Any):  # type: ignore[no-untyped-def]
    headers = {"content-type": content_type}
    if length is not None:
        headers["content-length"] = str(length)
    return lambda request: httpx.Response(status, headers=headers, stream=Chunks(chunks, **kw))


async def post_recording(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, list[bytes]]:
    """POST through the router's app, also returning the bodies of the ASGI messages it sent."""
    app = client.app  # type: ignore[attr-defined]
    pieces: list[bytes] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                pieces.append(message["body"])
            await send(message)

        await app(scope, receive, record)

    transport = httpx.ASGITransport(app=recording)
    async with httpx.AsyncClient(transport=transport, base_url=str(client.base_url)) as recorder:
        response = await recorder.post(GEN, json=body)
    return response, pieces


async def test_a_pods_error_answer_of_known_length_reaches_the_client_in_one_piece(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer(400, [ERROR[:10], ERROR[10:30], ERROR[30:]], length=len(ERROR))
    async with router() as client:
        response, pieces = await post_recording(client, {"prompt": "x"})
    assert response.status_code == 400 and response.content == ERROR
    assert pieces == [ERROR]
    assert response.headers["content-length"] == str(len(ERROR))


@pytest.mark.parametrize(
    ("length", "content_type"),
    [
        (None, "application/json"),  # unknown length: never held whole
        (WHOLE_BODY_BYTES + 1, "application/json"),  # over the limit
        ("exact", "text/event-stream"),  # events are never held back
    ],
    ids=["unknown-length", "over-the-limit", "events"],
)
async def test_other_answers_are_relayed_chunk_by_chunk(
    router: Any, pods: Any, length: int | str | None, content_type: str
) -> None:
    chunks = [ERROR[:10], ERROR[10:]]
    if length == WHOLE_BODY_BYTES + 1:
        chunks = [b"x" * (WHOLE_BODY_BYTES // 2), b"x" * (WHOLE_BODY_BYTES // 2 + 1)]
    size = sum(map(len, chunks)) if length is not None else None
    pods.behaviour[A] = answer(400, chunks, length=size, content_type=content_type)
    async with router() as client:
        response, pieces = await post_recording(client, {"prompt": "x"})
    assert response.content == b"".join(chunks)
    assert len(pieces) == len(chunks)


async def test_a_pod_that_breaks_off_a_small_answer_is_a_502_envelope(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer(400, [ERROR[:10]], length=len(ERROR), broken=True)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"})
    assert_envelope(response, 502, "bad_upstream_response")


async def test_the_pod_is_let_go_after_a_whole_answer(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer(400, [ERROR[:10], ERROR[10:]], length=len(ERROR))
    async with router() as client:
        await client.post(GEN, json={"prompt": "x"})
        response = await client.get("/metrics")
    busy = [line for line in response.text.splitlines() if line.startswith("kubediffusion_router_inflight")]
    assert busy and all(line.endswith(" 0.0") for line in busy), busy


@pytest.mark.parametrize(
    ("body", "headers"),
    [({"prompt": "x", "response_format": "url"}, {}), ({"prompt": "x"}, {"Accept": "image/png"})],
    ids=["url", "raw"],
)
async def test_images_are_decoded_in_a_worker_thread_not_on_the_event_loop(
    router: Any, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], headers: dict[str, str]
) -> None:
    threads: list[threading.Thread] = []
    decode = delivery.decode_image

    def recording(item: dict[str, Any]) -> bytes:
        threads.append(threading.current_thread())
        return decode(item)

    monkeypatch.setattr(delivery, "decode_image", recording)
    async with router() as client:
        response = await client.post(GEN, json=body, headers=headers)
    assert response.status_code == 200
    if headers:
        assert response.content == PNG
    else:
        assert response.json()["data"][0]["url"].startswith("http://router.test/")
    assert threads and all(thread is not threading.main_thread() for thread in threads)
