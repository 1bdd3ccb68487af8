"""Awaiting a request's work while watching for its client to go away (router and inference server).

uvicorn does not cancel a handler whose client disconnected. Without this, the inference server would
generate images nobody reads, and the router would hold its request to a pod open (so the pod never
sees the client leave, and the pod stays counted busy) until the images were made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")

DISCONNECT_POLL_S = 0.2


async def await_unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``; if the client goes away first, cancel it and return None.

    Work that finished anyway is returned (never dropped: it may hold resources, such as an open
    response from a pod, that only its consumer releases).
    """
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    return await task
                return None
    finally:
        if not task.done():
            task.cancel()
