"""Event streams in router tests: a pod that sends events on cue, and a client that sees each body
message the moment the app sends it (httpx's ASGITransport collects a whole answer before returning
it, so it cannot show that the router does not buffer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


def sse(event: str | None, data: dict[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def partial(index: int, kind: str = "image_generation") -> bytes:
    return sse(
        f"{kind}.partial_image",
        {"type": f"{kind}.partial_image", "b64_json": "UEFSVA==", "created_at": 1, "size": "auto",
         "quality": "auto", "background": "auto", "output_format": "png", "partial_image_index": index},
    )  # fmt: skip


def completed(b64: str, kind: str = "image_generation") -> bytes:
    usage = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0,
             "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}}  # fmt: skip
    return sse(
        f"{kind}.completed",
        {"type": f"{kind}.completed", "b64_json": b64, "created_at": 1, "size": "auto", "quality": "auto",
         "background": "auto", "output_format": "png", "usage": usage},
    )  # fmt: skip


class CuedStream(httpx.AsyncByteStream):
    """A pod's event stream: sends ``chunks[i]``, then waits for ``cues[i]`` (if any) before the next,
    and at the end waits for ``hold`` (if set) without ever finishing. Records whether it was closed."""

    def __init__(self, chunks: list[bytes], cues: dict[int, asyncio.Event] | None = None, *, hold: bool = False):
        self.chunks = chunks
        self.cues = cues or {}
        self.hold = hold
        self.sent = 0
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            yield chunk
            self.sent = index + 1
            if index in self.cues:
                await asyncio.wait_for(self.cues[index].wait(), 5)
        if self.hold:
            await asyncio.sleep(60)

    async def aclose(self) -> None:
        self.closed.set()


def event_stream_response(stream: CuedStream) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


class ASGIStreamClient:
    """One POST to an ASGI app; body messages land in ``received`` as the app sends them."""

    def __init__(self, app: Any, path: str, body: bytes, content_type: str = "application/json") -> None:
        self.app = app
        self.start_message: dict[str, Any] | None = None
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.chunks: list[bytes] = []
        self.done = asyncio.Event()
        self._request: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
        self._gone = asyncio.Event()
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn says
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", content_type.encode()), (b"host", b"router.test")],
            "client": ("127.0.0.1", 1234),
            "server": ("router.test", 80),
        }

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.app(self._scope, self._receive, self._send))

    def hang_up(self) -> None:
        self._gone.set()

    async def next_body(self) -> bytes:
        return await asyncio.wait_for(self.received.get(), 5)

    async def _receive(self) -> dict[str, Any]:
        if self._request:
            return self._request.pop(0)
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start_message = message
        elif message["type"] == "http.response.body":
            if message.get("body"):
                self.chunks.append(message["body"])
                await self.received.put(message["body"])
            if not message.get("more_body", False):
                self.done.set()
