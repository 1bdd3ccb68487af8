"""Streamed answers (``stream: true``): the pod's Server-Sent Events reach the client as the pod sends them.

Nothing waits for the stream to end: each event is passed on as soon as its closing blank line has
arrived (an event is the unit a client can use; a pod writes each one whole). Events are passed
through byte for byte, except the final ``*.completed`` ones, which get an ``id`` like every image the
router returns (:mod:`.delivery`), and are stored first when the request asked to ``store``.

A pod's ``: x-kubediffusion-compute-seconds N`` comment (its compute time, :mod:`.usage`) is read and not
passed on. When the stream ends (or the client hangs up), ``on_end`` gets the images completed and the
compute seconds reported: the request's bill is settled for those.

A client that hangs up closes the pod's stream (the pod then drops the work, see :class:`EventStream`).
A pod that breaks off mid-stream cannot turn into an HTTP error any more (the 200 is sent): the client
gets one ``error`` event with OpenAI's error envelope, which the official clients raise as an error,
and the stream ends.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kubediffusion.api.computetime import comment_seconds
from kubediffusion.api.events import MAX_EVENT_BYTES, SSE_HEADERS, SSE_MEDIA_TYPE, encode_error, parse_event
from kubediffusion.router.delivery import Delivery, Keeper, pod_id
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.signing import new_image_id

log = logging.getLogger(__name__)

EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
COMPLETED = b".completed"


class EventSplitter:
    """Bytes in, complete events (each with its closing blank line) out. Each byte is scanned about
    once, however many chunks a large event (a final image) arrives in."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events, start = [], 0
        # A blank line (at most 4 bytes) may straddle the previous chunk's end: look back 3 bytes.
        for match in EVENT_END.finditer(self._buffer, max(0, self._scanned - 3)):
            events.append(bytes(self._buffer[start : match.end()]))
            start = match.end()
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        return events

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer)

    @property
    def pending_size(self) -> int:
        return len(self._buffer)


def event_fields(event: bytes) -> tuple[str | None, str]:
    """(the ``event:`` name, the ``data:`` lines joined) of one event, as the SSE spec reads them."""
    text = event.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")  # SSE's three line ends
    parsed = parse_event(text)
    return (parsed.event, parsed.data) if parsed is not None else (None, "")


def encode_event(name: str | None, payload: dict[str, Any]) -> bytes:
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n\n").encode()


def error_event(message: str) -> bytes:
    return encode_error(BadGatewayError(message))


@dataclass
class StreamTally:
    """What a stream delivered: images completed, compute seconds the pod reported."""

    images: int = 0
    gpu_seconds: float = 0.0


async def finish_event(event: bytes, delivery: Delivery, keeper: Keeper, tally: StreamTally | None = None) -> bytes:
    """``event`` as the client gets it: unchanged unless it is a completed image (then with its id)."""
    if COMPLETED not in event:
        return event
    name, data = event_fields(event)
    try:
        payload = json.loads(data)
    except ValueError:
        return event
    if not isinstance(payload, dict) or not str(payload.get("type", "")).endswith(".completed"):
        return event
    if tally is not None:
        tally.images += 1
    if delivery.store:
        try:  # decoded off the event loop, like a whole answer's images
            payload["id"] = await keeper.keep_item(payload, delivery)
        except BadGatewayError:
            log.warning("a pod's completed event holds no readable image: not stored")
            return event
    elif pod_id(payload) is None:
        payload["id"] = new_image_id()
    else:
        return event
    return encode_event(name, payload)


async def relay_events(
    upstream: Upstream, delivery: Delivery, keeper: Keeper, tally: StreamTally | None = None
) -> AsyncIterator[bytes]:
    """The client's stream: the pod's events one by one, as they arrive."""
    splitter = EventSplitter()
    tally = tally if tally is not None else StreamTally()
    try:
        async for chunk in upstream.aiter_raw():
            for event in splitter.feed(chunk):
                seconds = comment_seconds(event)
                if seconds is not None:
                    tally.gpu_seconds += seconds
                    continue
                yield await finish_event(event, delivery, keeper, tally)
            if splitter.pending_size > MAX_EVENT_BYTES:
                log.warning("pod %s sent an event over %d bytes: stream cut", upstream.endpoint, MAX_EVENT_BYTES)
                yield error_event("The model server sent an event the router could not read.")
                return
        if splitter.pending.strip():  # a last event without its blank line
            last = splitter.pending + b"\n\n"
            seconds = comment_seconds(last)
            if seconds is not None:
                tally.gpu_seconds += seconds
            else:
                yield await finish_event(last, delivery, keeper, tally)
    except httpx.HTTPError as exc:
        log.warning("pod %s broke off its event stream: %s: %s", upstream.endpoint, type(exc).__name__, exc)
        yield error_event("The model server's stream broke off before its end.")


class EventStream(StreamingResponse):
    """An event stream to the client that always closes the pod's stream afterwards, also when the
    client hangs up half-way (starlette then stops iterating; the pod sees its connection close)."""

    def __init__(
        self,
        upstream: Upstream,
        delivery: Delivery,
        keeper: Keeper,
        *,
        on_end: Callable[[int, float], None] | None = None,
    ) -> None:
        headers = dict(SSE_HEADERS)  # no proxy in between may buffer
        self.tally = StreamTally()
        super().__init__(
            relay_events(upstream, delivery, keeper, self.tally),
            status_code=upstream.status_code,
            headers=headers,
            media_type=SSE_MEDIA_TYPE,
        )
        self.upstream = upstream
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.upstream.aclose()
            finally:
                if self.on_end is not None:
                    self.on_end(self.tally.images, self.tally.gpu_seconds)
