"""Waking a model at zero replicas: one request for one replica per wake-up, however many requests wait.

:class:`Waker` is asked by :mod:`.holding` each time a request has to wait for a model known to be at zero
(its spec asks for no pod). It starts one wake-up per model at a time: a task that asks its
:class:`Scaler` for one replica (:class:`~.kube_scaler.KubeScaler` writes the ImageModel's scale
subresource), retried with backoff while the error may pass (a conflict, the API server busy or
unreachable) and given up at once when it cannot (no right to, the model gone, a write the CRD refuses).
A model that already has replicas when the scaler looks (another router replica, the autoscaler or a
person was first) is left as it is.

A wake-up that succeeded is remembered until discovery shows the model's new replicas (at most
``memory`` seconds): requests that arrive in between start no new one. One that gave up is forgotten,
so the next request held tries again. The operator's autoscaler wakes the model as well, from the held
requests it reads in this router's metrics: the two ask for the same thing, so whichever comes first wins
and the other finds the replicas already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.routing import ModelEntry, RoutingTable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

WAKE_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)  # between attempts: six in about 15 s
WAKE_MEMORY_SECONDS = 30.0


class WakeError(Exception):
    """A wake-up attempt failed; ``retryable`` when trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Scaler(Protocol):
    async def wake(self, namespace: str, name: str) -> bool:
        """Ask for one replica of a model at zero. True when asked; False when it has replicas already
        (then nothing is written). Raises :class:`WakeError`."""
        ...


class Waker:
    def __init__(
        self,
        scaler: Scaler,
        *,
        table: Callable[[], RoutingTable],
        metrics: RouterMetrics,
        backoff: Sequence[float] = WAKE_BACKOFF_SECONDS,
        memory: float = WAKE_MEMORY_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scaler = scaler
        self._table = table
        self._metrics = metrics
        self._backoff = tuple(backoff)
        self._memory = memory
        self._sleep = sleep
        self._clock = clock
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._woken: dict[Key, float] = {}  # model -> when its wake-up succeeded

    def wake(self, entry: ModelEntry) -> None:
        """Start a wake-up of ``entry`` unless it is not at zero or one is under way or just done."""
        key = entry.key
        if not entry.at_zero or key in self._tasks:
            return
        woken = self._woken.get(key)
        if woken is not None and self._clock() - woken < self._memory:
            return
        self._woken.pop(key, None)
        self._tasks[key] = asyncio.create_task(self._wake(key), name=f"wake-{entry.namespace}-{entry.name}")

    def table_changed(self, table: RoutingTable) -> None:
        """A model that discovery no longer shows at zero (or at all) may be woken again once back at zero."""
        for key in list(self._woken):
            entry = table.find(*key)
            if entry is None or not entry.at_zero:
                del self._woken[key]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wake(self, key: Key) -> None:
        namespace, name = key
        started = self._clock()
        try:
            for attempt, delay in enumerate((0.0, *self._backoff), start=1):
                if delay:
                    await self._sleep(delay)
                try:
                    scaled = await self._scaler.wake(namespace, name)
                except WakeError as exc:
                    if not exc.retryable:
                        log.error("cannot wake model %s/%s: %s", namespace, name, exc)
                        break
                    log.warning("waking model %s/%s (attempt %d) failed: %s", namespace, name, attempt, exc)
                    continue
                self._done(key, "scaled" if scaled else "awake")
                if scaled:
                    self._metrics.wake_duration.observe(self._clock() - started)
                    log.info("model %s/%s was at zero replicas: asked for one", namespace, name)
                return
            else:
                log.error("gave up waking model %s/%s after %d attempts", namespace, name, len(self._backoff) + 1)
            self._metrics.wakeups.labels(model=name, namespace=namespace, outcome="failed").inc()
        finally:
            self._tasks.pop(key, None)

    def _done(self, key: Key, outcome: str) -> None:
        self._metrics.wakeups.labels(model=key[1], namespace=key[0], outcome=outcome).inc()
        entry = self._table().find(*key)
        if entry is not None and entry.at_zero:  # discovery has not shown the new replicas yet
            self._woken[key] = self._clock()
