"""Calling an ASGI app directly, for what an HTTP client library cannot do: hang up mid-request."""

from __future__ import annotations

import asyncio
from typing import Any


class HangingUpClient:
    """One ``POST path`` with a JSON body whose client disconnects when the test calls :meth:`hang_up`."""

    def __init__(self, app: Any, path: str, body: bytes, host: str = "app.test") -> None:
        self.app = app
        self.sent: list[dict[str, Any]] = []
        self._messages: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
        self._disconnected = asyncio.Event()
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", host.encode())],
            "client": ("127.0.0.1", 1234),
            "server": (host, 80),
        }

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.app(self._scope, self._receive, self._send))

    def hang_up(self) -> None:
        self._disconnected.set()

    async def _receive(self) -> dict[str, Any]:
        if self._messages:
            return self._messages.pop(0)
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
