"""Driving an ASGI app with a scripted upload: body chunks, pauses, then a hang-up or silence."""

from __future__ import annotations

import asyncio
from typing import Any

Message = dict[str, Any]


def chunk(data: bytes, more: bool = True) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


HANG_UP: Message = {"type": "http.disconnect"}


async def upload(
    app: Any,
    script: list[Message | float],
    *,
    path: str = "/v1/images/generations",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 40000),
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """One POST; ``script`` is what receive() returns in turn (a number: a pause of that many seconds);
    after it, receive() waits forever. Returns status (None if nothing was sent), headers and body."""
    sent: list[Message] = []
    pending = list(script)

    async def receive() -> Message:
        while pending:
            step = pending.pop(0)
            if isinstance(step, dict):
                return step
            await asyncio.sleep(step)
        await asyncio.Event().wait()  # the client went quiet
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"app.test"), *(headers or [])],
        "client": client,
        "server": ("app.test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if not starts:
        return None, {}, body
    return starts[0]["status"], dict(starts[0]["headers"]), body
