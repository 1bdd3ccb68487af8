"""Best-effort clean-up calls that must outlive the request that started them (a job that timed out
or was cancelled asks its upstream to drop it): run in the background, kept referenced until done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

_RUNNING: set[asyncio.Task[Any]] = set()


def in_background(coroutine: Coroutine[Any, Any, Any], what: str) -> None:
    task = asyncio.get_running_loop().create_task(coroutine, name=what)
    _RUNNING.add(task)
    task.add_done_callback(lambda done: _finished(done, what))


def _finished(task: asyncio.Task[Any], what: str) -> None:
    _RUNNING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.info("%s failed: %r", what, task.exception())
