"""Fake engines for the engine tier: a served ASGI app on 127.0.0.1 that a test can break on purpose.

Each fake (``fake_*.py``) follows its engine's documented request and response shapes (paths, request
fields, status polling, image retrieval, error bodies) closely enough that an adapter written against
the engine's docs works against it, and checks what it is sent the way the engine would (an unknown
node, a missing field: the engine's own 4xx). ``Behaviour`` is how a test breaks it: unhealthy, a 5xx,
a body that is not JSON, a job that hangs or is slow, a 4xx with the engine's error shape. A fake runs
in a thread of the test process (uvicorn), on a fixed port it can be stopped and started on again
(connection refused in between).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from PIL import Image
from starlette.responses import Response

from kubediffusion.local import LOOPBACK, free_port

Failure = Literal["500", "garbage", "hang", "4xx", "job_failed"]
HANG_S = 30.0  # a "hang" ends by itself: longer than any engine timeout these tests set


@dataclass
class Behaviour:
    healthy: bool = True
    failure: Failure | None = None
    delay_s: float = 0.0  # before a job's images exist (or its answer, for engines that answer in one call)
    requests: list[Any] = field(default_factory=list)  # job bodies as received, oldest first
    cancelled: list[str] = field(default_factory=list)  # jobs the adapter asked to cancel or delete

    def reset(self) -> None:
        self.healthy, self.failure, self.delay_s = True, None, 0.0
        self.requests.clear()
        self.cancelled.clear()


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The colour a fake paints the image of ``seed`` (so a test can read the seed back)."""
    return (seed % 251, (seed // 251) % 251, 7)


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel(data: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    value: Any = image.getpixel((0, 0))
    return (value[0], value[1], value[2])


async def broken_answer(behaviour: Behaviour) -> Response | None:
    """What a broken fake answers for a job call (None: answer normally)."""
    if behaviour.failure == "500":
        return Response('{"detail": "the engine broke (fake)"}', status_code=500, media_type="application/json")
    if behaviour.failure == "garbage":
        return Response("<html>this is not JSON</html>", status_code=200, media_type="application/json")
    if behaviour.failure == "hang":
        await asyncio.sleep(HANG_S)
    return None


class FakeServer:
    """Serves ``app`` on 127.0.0.1:``port`` in a thread; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host=LOOPBACK, port=self.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-engine", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive(), f"the fake engine did not start on port {self.port}"
            assert time.monotonic() < deadline, "the fake engine did not start in 10 s"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
            self._server = self._thread = None


@contextmanager
def served(app: Any) -> Iterator[FakeServer]:
    server = FakeServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
