"""Scale from zero: a request for a model with no ready pod waits here for one, instead of a 503.

Only models that scale to zero wait (``spec.autoscaling.minReplicas: 0``; :attr:`ModelEntry.holds_requests`),
whether still at zero or already waking (woken by this router, another replica or the autoscaler): for
them no pod is the expected state, and a cold start takes minutes. Every other model with no ready pod
(fixed replicas, ``minReplicas`` 1 or more, or ``replicas: 0`` set by hand: switched off on purpose) gets
the 503 with Retry-After it always got, at once: a model that should be serving and is not is broken
or rolling, and a client or load balancer is better told than kept waiting. Static models never wait.

* A request for a model at zero asks for one replica (:class:`~.wakeup.Waker`: once per wake-up) and waits.
* At most ``limit`` requests wait per model (in one router replica); one more is a 429 ``queue_full``
  with Retry-After, never a wait without end (it still wakes the model).
* A request waits at most ``timeout`` seconds from its arrival (default 10 minutes: GPU pods take minutes
  to be scheduled, pull their image and load their weights), then gets a 503 with Retry-After.
* When discovery's table gives the model a ready pod, the waiting requests go on to it in arrival order.
  A model deleted meanwhile answers them its 404; one that stopped scaling to zero, or failed, a 503.
* A client that hangs up while its request waits is dropped from the queue (its task is cancelled, see
  :mod:`kubediffusion.api.disconnect`).

``kubediffusion_router_held_requests{model,namespace}`` counts the requests waiting: the operator's
autoscaler adds them to the model's demand (nothing else sees them yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from prometheus_client import Gauge

from kubediffusion.api.errors import ModelNotFoundError, QueueFullError, ServiceUnavailableError
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.wakeup import Key, Waker

log = logging.getLogger(__name__)


class Holds:
    def __init__(
        self,
        *,
        table: Callable[[], RoutingTable],
        metrics: RouterMetrics,
        waker: Waker | None,
        limit: int,
        timeout: float,
        retry_after: int,
    ) -> None:
        self._table = table
        self._metrics = metrics
        self._waker = waker
        self._limit = limit
        self._timeout = timeout
        self._retry_after = retry_after
        self._queues: dict[Key, deque[asyncio.Future[ModelEntry]]] = {}

    def held(self, namespace: str, name: str) -> int:
        return len(self._queues.get((namespace, name), ()))

    async def ready(self, entry: ModelEntry) -> ModelEntry:
        """The model as it is now, to forward to: at once unless it holds requests, else once a pod of it
        is ready. Raises QueueFullError (429), ServiceUnavailableError (503) or ModelNotFoundError."""
        entry = self._table().find(*entry.key) or entry  # the table may have changed since the route read it
        if not entry.holds_requests:
            return entry
        if self._waker is not None:
            self._waker.wake(entry)
        if self.held(*entry.key) >= self._limit:
            raise QueueFullError(
                f"Too many requests are waiting for the model '{entry.name}' to start (at most {self._limit}). "
                "Try again later.",
                retry_after=self._retry_after,
            )
        waiter: asyncio.Future[ModelEntry] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(entry.key, deque()).append(waiter)
        self._gauge(entry.key).inc()
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()  # released just as the time ran out
            log.warning("model %s/%s: no pod ready within %gs; request refused", *entry.key, self._timeout)
            raise ServiceUnavailableError(
                f"The model '{entry.name}' did not start within {self._timeout:g} seconds. Try again later.",
                retry_after=self._retry_after,
            ) from None
        finally:
            self._leave(entry.key, waiter)

    def table_changed(self, table: RoutingTable) -> None:
        """Release (or refuse) the requests of every model that no longer holds them."""
        if self._waker is not None:
            self._waker.table_changed(table)
        for key in list(self._queues):
            entry = table.find(*key)
            if entry is not None and entry.holds_requests:
                if self._waker is not None:
                    self._waker.wake(entry)  # back at zero (someone scaled it down) while requests wait
                continue
            waiters = self._queues.pop(key)
            self._gauge(key).dec(len(waiters))
            if entry is not None and entry.endpoints:
                log.info("model %s/%s has a ready pod: %d held request(s) go on", *key, len(waiters))
            for waiter in waiters:  # in arrival order: asyncio resumes their tasks in this order
                if waiter.done():
                    continue
                if entry is None:
                    waiter.set_exception(ModelNotFoundError(key[1]))
                elif entry.endpoints:
                    waiter.set_result(entry)
                else:
                    waiter.set_exception(self._unavailable(entry))

    def close(self) -> None:
        """Refuse every request still waiting (the router is stopping)."""
        for key, waiters in list(self._queues.items()):
            del self._queues[key]
            self._gauge(key).dec(len(waiters))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(
                        ServiceUnavailableError("The router is shutting down.", retry_after=self._retry_after)
                    )

    def _unavailable(self, entry: ModelEntry) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"The model '{entry.name}' has no ready replica. Try again later.", retry_after=self._retry_after
        )

    def _leave(self, key: Key, waiter: asyncio.Future[ModelEntry]) -> None:
        queue = self._queues.get(key)
        if queue is None or waiter not in queue:
            return  # released (or refused) by table_changed, which counted it out
        queue.remove(waiter)
        self._gauge(key).dec()
        if not queue:
            del self._queues[key]

    def _gauge(self, key: Key) -> Gauge:
        return self._metrics.held.labels(model=key[1], namespace=key[0])
