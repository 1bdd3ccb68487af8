"""Server-Sent Events of streamed generations and edits, in OpenAI's shapes (``ImageGenStreamEvent``,
``ImageEditStreamEvent``), so the official client's ``stream=True`` parses them in strict mode.

Wire format (what a pod sends and the router must pass through unbuffered): ``Content-Type:
text/event-stream``; each event is ``event: <type>\\ndata: <one line of JSON>\\n\\n``; a comment line
(``: keep-alive``) is sent while a request waits, so proxies do not time the connection out. For each
output image: up to ``partial_images`` ``*.partial_image`` events (``partial_image_index`` 0, 1, ... per
image; fewer when the image has fewer denoising steps, as OpenAI's spec allows), then one
``*.completed`` event; with several output images, their events interleave in time and the completed
events come in image order. A failure after the stream started is an ``event: error`` whose data is
the error envelope (the ``openai`` client raises it as an ``APIError``); the stream then ends.

Echoed fields use only values OpenAI's event schemas allow: ``size`` is ``WxH`` when it is one of
OpenAI's sizes, else ``auto``; ``quality`` and ``background`` are the request's or ``auto``. ``usage``
(required on completed events) is all zeros: diffusion models have no tokens. ``id`` on a completed
event is ours, set by the router when it stores the image; pods leave it out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel

from kubediffusion.api.errors import APIError
from kubediffusion.api.schema import RESPONSE_SIZES, GenerationParams, ImagesUsage, OutputFormat

SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx-style proxies: do not buffer
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_INTERVAL_S = 15.0
MAX_EVENT_BYTES = 64 * 1024 * 1024  # one event (an image in base64) when parsing a stream

StreamTask = Literal["generation", "edit"]
_PREFIX: dict[StreamTask, str] = {"generation": "image_generation", "edit": "image_edit"}
_QUALITIES = frozenset({"low", "medium", "high", "auto"})
_BACKGROUNDS = frozenset({"transparent", "opaque", "auto"})


class _ImageEvent(BaseModel):
    type: str
    b64_json: str
    created_at: int
    size: str
    quality: Literal["low", "medium", "high", "auto"]
    background: Literal["transparent", "opaque", "auto"]
    output_format: OutputFormat


class PartialImageEvent(_ImageEvent):
    """``image_generation.partial_image`` / ``image_edit.partial_image``."""

    type: Literal["image_generation.partial_image", "image_edit.partial_image"]
    partial_image_index: int


class CompletedEvent(_ImageEvent):
    """``image_generation.completed`` / ``image_edit.completed``."""

    type: Literal["image_generation.completed", "image_edit.completed"]
    usage: ImagesUsage
    id: str | None = None


@dataclass(frozen=True)
class EventEcho:
    """The fields every event of one request repeats."""

    size: str
    quality: str
    background: str
    output_format: OutputFormat

    @classmethod
    def of(cls, params: GenerationParams, *, quality: str | None, background: str | None) -> EventEcho:
        size = f"{params.width}x{params.height}"
        return cls(
            size=size if size in RESPONSE_SIZES else "auto",
            quality=quality if quality in _QUALITIES else "auto",
            background=background if background in _BACKGROUNDS else "auto",
            output_format=params.output_format,
        )


def partial_image_event(
    task: StreamTask, b64_json: str, echo: EventEcho, index: int, created_at: int
) -> PartialImageEvent:
    fields = {"type": f"{_PREFIX[task]}.partial_image", "b64_json": b64_json, "created_at": created_at}
    return PartialImageEvent.model_validate({**fields, **asdict(echo), "partial_image_index": index})


def completed_event(task: StreamTask, b64_json: str, echo: EventEcho, created_at: int) -> CompletedEvent:
    fields = {"type": f"{_PREFIX[task]}.completed", "b64_json": b64_json, "created_at": created_at}
    return CompletedEvent.model_validate({**fields, **asdict(echo), "usage": ImagesUsage()})


def encode_event(event: _ImageEvent) -> bytes:
    """One SSE message: ``event:`` line with the type, ``data:`` line with the JSON (one line)."""
    data = json.dumps(event.model_dump(exclude_none=True), separators=(",", ":"))
    return f"event: {event.type}\ndata: {data}\n\n".encode()


def encode_error(error: APIError) -> bytes:
    return f"event: error\ndata: {json.dumps(error.envelope(), separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class ServerSentEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Incremental parser of an event stream (for the router, which may read a pod's events, and for
    tests). ``feed`` returns the events completed by a chunk; comments are skipped; an event larger
    than ``max_event_bytes`` is a ValueError."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._held_cr = b""  # a chunk that ended in CR: its LF may be the next chunk's first byte
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        chunk = self._held_cr + chunk
        self._held_cr = b"\r" if chunk.endswith(b"\r") else b""
        chunk = chunk[: len(chunk) - len(self._held_cr)]
        self._buffer += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # all three line ends of SSE
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            event = parse_event(block.decode("utf-8"))
            if event is not None:
                events.append(event)
        if len(self._buffer) > self._max:
            raise ValueError(f"an event of more than {self._max} bytes")
        return events


def parse_event(block: str) -> ServerSentEvent | None:
    """One event's lines (LF-separated, its blank line not included) as the SSE spec reads them; None for
    a block of comments only."""
    name: str | None = None
    data: list[str] = []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return ServerSentEvent(name, "\n".join(data)) if name is not None or data else None


def iter_events(chunks: Iterator[bytes]) -> Iterator[ServerSentEvent]:
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
