"""``stream: true``: the pod's events reach the client as the pod sends them, a client that hangs up
cancels the pod's request, completed images get ids (and are stored when asked)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from kubediffusion.router.streaming import EventSplitter, event_fields
from tests.unit.router.conftest import PNG
from tests.unit.router.streams import (
    ASGIStreamClient,
    CuedStream,
    completed,
    event_stream_response,
    partial,
)
from tests.unit.router.test_router_app import A, B, entry
from tests.unit.router.uploads import form, image_file

STREAM = json.dumps({"prompt": "a lighthouse", "stream": True, "partial_images": 2}).encode()
FINAL = base64.b64encode(PNG).decode()


def events_of(body: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    splitter = EventSplitter()
    return [(name, json.loads(data)) for name, data in map(event_fields, splitter.feed(body)) if data]


async def test_each_event_reaches_the_client_before_the_pod_sends_the_next(router: Any, pods: Any) -> None:
    """The pod holds back each next event until the client has the previous one: a router that buffered
    (the whole stream, or a chunk of some size) would never let this finish."""
    cues = {0: asyncio.Event(), 1: asyncio.Event()}
    stream = CuedStream([partial(0), partial(1), completed(FINAL)], cues)
    pods.behaviour[A] = lambda r: event_stream_response(stream)
    async with router() as client:
        call = ASGIStreamClient(client.app, "/v1/images/generations", STREAM)
        task = call.start()
        first = await call.next_body()
        assert stream.sent == 1 and not call.done.is_set()
        cues[0].set()
        second = await call.next_body()
        assert stream.sent == 2 and not call.done.is_set()
        cues[1].set()
        last = await call.next_body()
        await asyncio.wait_for(task, 5)
    assert call.start_message is not None and call.start_message["status"] == 200
    headers = dict(call.start_message["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream") and headers[b"cache-control"] == b"no-cache"
    assert first == partial(0) and second == partial(1)  # byte for byte
    ((name, payload),) = events_of(last)
    assert name == "image_generation.completed" and payload["b64_json"] == FINAL and len(payload["id"]) == 32


async def test_a_client_that_hangs_up_mid_stream_closes_the_pods_stream(router: Any, pods: Any) -> None:
    stream = CuedStream([partial(0)], hold=True)
    pods.behaviour[A] = lambda r: event_stream_response(stream)
    async with router() as client:
        app = client.app
        call = ASGIStreamClient(app, "/v1/images/generations", STREAM)
        task = call.start()
        await call.next_body()
        assert app.state.router.balancer.in_flight(A) == 1
        call.hang_up()
        await asyncio.wait_for(stream.closed.wait(), 5)
        await asyncio.wait_for(task, 5)
        assert app.state.router.balancer.in_flight(A) == 0


async def test_the_edit_stream_goes_to_the_pods_edits_path_and_through(router: Any, pods: Any) -> None:
    chunks = [partial(0, "image_edit"), completed(FINAL, "image_edit")]
    pods.behaviour[A] = lambda r: event_stream_response(CuedStream(chunks))
    body, headers = form({"prompt": "a hat", "stream": "true", "partial_images": 1}, [image_file()])
    async with router() as client:
        response = await client.post("/v1/images/edits", content=body, headers=headers)
    assert str(pods.requests[0].url) == A + "/v1/images/edits" and pods.requests[0].content == body
    assert response.headers["content-type"].startswith("text/event-stream")
    assert [name for name, _ in events_of(response.content)] == ["image_edit.partial_image", "image_edit.completed"]


async def test_stored_stream_images_can_be_fetched_by_the_id_of_their_completed_event(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: event_stream_response(CuedStream([partial(0), completed(FINAL)]))
    body = {"prompt": "x", "stream": True, "store": True, "conversation_id": "c-1"}
    async with router() as client:
        response = await client.post("/v1/images/generations", json=body)
        (_, done) = events_of(response.content)[-1]
        fetched = await client.get(f"/v1/images/{done['id']}")
    assert fetched.status_code == 200 and fetched.content == PNG


async def test_unstored_stream_images_have_ids_that_fetch_nothing(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: event_stream_response(CuedStream([completed(FINAL)]))
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "stream": True})
        ((_, done),) = events_of(response.content)
        fetched = await client.get(f"/v1/images/{done['id']}")
    assert len(done["id"]) == 32 and fetched.status_code == 404


async def test_keepalive_comments_and_crlf_events_pass_unchanged(router: Any, pods: Any) -> None:
    crlf = partial(0).replace(b"\n", b"\r\n")
    chunks = [b": keep-alive\n\n", crlf[:10], crlf[10:], b": keep-alive\n\n"]
    pods.behaviour[A] = lambda r: event_stream_response(CuedStream(chunks))
    async with router() as client:
        response = await client.post(
            "/v1/images/generations", content=STREAM, headers={"content-type": "application/json"}
        )
    assert response.content == b"".join(chunks)


async def test_a_pod_that_breaks_off_mid_stream_ends_it_with_an_error_event(router: Any, pods: Any) -> None:
    class Broken(CuedStream):
        async def __aiter__(self) -> Any:
            yield partial(0)
            raise httpx.ReadError("pod went away")

    pods.behaviour[A] = lambda r: event_stream_response(Broken([]))
    async with router() as client:
        response = await client.post(
            "/v1/images/generations", content=STREAM, headers={"content-type": "application/json"}
        )
        assert client.app.state.router.balancer.in_flight(A) == 0
    events = events_of(response.content)
    assert [name for name, _ in events] == ["image_generation.partial_image", "error"]
    error = events[1][1]["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"


async def test_a_busy_pod_is_skipped_before_the_stream_starts(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: httpx.Response(429, json={"error": {"message": "full"}}, headers={"Retry-After": "1"})
    pods.behaviour[B] = lambda r: event_stream_response(CuedStream([completed(FINAL)]))
    async with router([entry(endpoints=(A, B))]) as client:
        response = await client.post(
            "/v1/images/generations", content=STREAM, headers={"content-type": "application/json"}
        )
    assert response.status_code == 200 and [n for n, _ in events_of(response.content)] == ["image_generation.completed"]
    assert pods.hits() == 2


async def test_a_pod_that_answers_a_stream_request_with_json_is_delivered_as_json(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post(
            "/v1/images/generations", content=STREAM, headers={"content-type": "application/json"}
        )
    assert response.headers["content-type"] == "application/json" and response.json()["data"][0]["id"]


@pytest.mark.parametrize("event", [partial(0), partial(1).replace(b"\n", b"\r\n"), completed("QUJD")])
def test_event_splitter_finds_events_across_any_chunk_boundary(event: bytes) -> None:
    stream = event + b": keep-alive\n\n" + event
    for cut in range(1, len(stream)):
        for second in (cut + 1, cut + 3, len(stream)):
            splitter = EventSplitter()
            found = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:second]) + splitter.feed(stream[second:])
            assert found == [event, b": keep-alive\n\n", event] and splitter.pending == b""
