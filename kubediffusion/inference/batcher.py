"""Dynamic batching in front of one worker thread that owns the pipeline.

Rules (each has a unit test in tests/unit/inference/test_inference_batcher.py):

- **Bounded queue, counted in images.** A request of ``n`` images takes ``n`` places. When the waiting
  images plus ``n`` exceed ``max_queue``, ``submit`` raises ``QueueFullError`` (429) with a Retry-After
  estimated from recent batch durations. A request is never refused into an empty queue, so ``n`` above
  ``max_queue`` is still served. The batch being run does not count.
- **Batching.** Items with equal ``key`` share one ``run`` call, up to ``max_batch_size`` images. An
  item larger than ``max_batch_size`` runs alone, whole (``n`` images in one call).
- **Window.** A batch starts when it is full or when its oldest item has waited ``batch_window``,
  whichever comes first; an item that already waited that long (behind a running batch) goes at once.
  Exception, for latency at low load: when traffic looks sequential (the previous batch was a single
  item and nothing arrived while it ran) a lone item starts at once instead of waiting for company.
- **Fairness.** The oldest waiting item always leads the next batch; later items with the same key
  fill it in arrival order (first fit). Nothing waits behind a younger item.
- **Cancellation.** Cancelling the task awaiting ``submit`` (a client that disconnected), or a future
  ``enqueue`` returned, removes its item from the queue if its batch has not started; once started,
  the batch runs on for the others and the result is discarded.
- **Groups.** ``enqueue`` queues one request's items (an edit of several images, a streamed request
  that must know it was accepted before it answers 200) all or none: the queue-full rule counts them
  together, and a refusal queues nothing.
- **One worker.** ``run`` executes in a single dedicated thread, so the event loop keeps answering
  (``/health``) while a batch runs, and the pipeline is only ever touched by one thread. A coroutine
  function ``run`` (an engine adapter: its work is waiting on another server) is awaited in the event
  loop instead, still one batch at a time.
- **Failures.** ``run`` raising fails its whole batch; a result that is an exception instance fails
  only its own item (an adapter's jobs are separate upstream calls).
- **Finishing elsewhere.** A result may be a ``concurrent.futures.Future`` (images still being encoded
  in the encoding pool): the worker starts the next batch at once, and the item gets that future's
  outcome when it is done; ``on_batch`` then waits for all of the batch's futures (the encode phase
  is part of its spans).
- **Requests.** Each item belongs to the request that queued it (:mod:`.requestctx`). ``run`` sees the
  batch's :class:`~.requestctx.Batch` (its requests, for log lines and phase times) in ``BATCH``; when it
  is done each request gets its share of the batch's seconds, by images, before any result is delivered,
  and ``on_batch`` gets the batch (metrics, spans). Tested through the app: test_inference_request_ids.py
  and test_inference_compute_seconds.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, cast

from kubediffusion.api.errors import QueueFullError, ServiceUnavailableError
from kubediffusion.inference.requestctx import BATCH, Batch, RequestContext, current_request

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Result: TypeAlias = R | BaseException | Future[R]  # see "Finishing elsewhere"


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    key: Hashable
    size: int
    future: asyncio.Future[R]
    enqueued_at: float = field(default_factory=time.monotonic)
    request: RequestContext | None = field(default_factory=current_request)


class Batcher(Generic[T, R]):
    """Queue + batch + run in one worker thread. ``start()`` before ``submit``; ``stop()`` at shutdown."""

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[Result[R]]] | Callable[[list[T]], Awaitable[Sequence[Result[R]]]],
        *,
        key: Callable[[T], Hashable],
        size: Callable[[T], int],
        max_batch_size: int,
        batch_window_s: float,
        max_queue: int,
        executor: ThreadPoolExecutor | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or batch_window_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and batch_window_s >= 0")
        self._run = run
        self._run_in_loop = inspect.iscoroutinefunction(run)
        self._key = key
        self._size = size
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_queue = max_queue
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="kd-pipeline")
        self._on_batch = on_batch
        self._waiting: list[_Entry[T, R]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running_images = 0
        self._batch_seconds = 1.0  # running average of one batch's duration, for Retry-After
        self._sequential = False  # previous batch ran alone and nothing arrived meanwhile (none yet: False)
        self._closed = False
        self._settling: set[asyncio.Task[None]] = set()  # batches whose results finish elsewhere

    # -- public -------------------------------------------------------------------------------

    @property
    def queued_images(self) -> int:
        return sum(entry.size for entry in self._waiting)

    @property
    def queued_requests(self) -> int:
        return len(self._waiting)

    @property
    def running_images(self) -> int:
        return self._running_images

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="kd-batcher")

    async def stop(self) -> None:
        """Fail everything still waiting with 503 and stop the worker (a running batch is cancelled)."""
        self._closed = True
        for entry in self._waiting:
            if not entry.future.done():
                entry.future.set_exception(ServiceUnavailableError("The server is shutting down.", retry_after=1))
        self._waiting.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._settling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def retry_after_seconds(self) -> float:
        batches_ahead = math.ceil((self.queued_images + self._running_images) / self.max_batch_size) + 1
        return max(1.0, batches_ahead * self._batch_seconds)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result; raises QueueFullError when the queue is full."""
        (future,) = self.enqueue([item])
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel([future])
            raise

    def enqueue(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue ``items`` together and return their futures at once (QueueFullError, with nothing
        queued, when they do not fit). Cancel the futures (or call :meth:`cancel`) to drop them."""
        if self._closed:
            raise ServiceUnavailableError("The server is shutting down.", retry_after=1)
        sizes = [self._size(item) for item in items]
        queued = self.queued_images
        if queued and queued + sum(sizes) > self.max_queue:
            raise QueueFullError(
                f"The model server's queue is full ({queued} images waiting, at most {self.max_queue}); "
                "retry after the Retry-After interval.",
                retry_after=self.retry_after_seconds(),
            )
        loop = asyncio.get_running_loop()
        entries: list[_Entry[T, R]] = [
            _Entry(item, self._key(item), size, loop.create_future()) for item, size in zip(items, sizes, strict=True)
        ]
        for entry in entries:
            entry.future.add_done_callback(functools.partial(self._forget, entry))
        self._waiting.extend(entries)
        self._wakeup.set()
        return [entry.future for entry in entries]

    def cancel(self, futures: Sequence[asyncio.Future[R]]) -> None:
        """Cancel ``futures`` and free their places at once (not one loop iteration later)."""
        for future in futures:
            future.cancel()
        dropped = [entry for entry in self._waiting if entry.future in futures]
        for entry in dropped:
            self._waiting.remove(entry)
        if dropped:
            log.info("dropped %d queued item(s) whose client went away", len(dropped))

    def _forget(self, entry: _Entry[T, R], future: asyncio.Future[R]) -> None:
        if future.cancelled() and entry in self._waiting:  # not started: free its place
            self._waiting.remove(entry)
            log.info("dropped a queued item whose client went away")

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the worker thread (loading, warm-up): the pipeline is only touched there."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- worker -------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Entry[T, R]]:
        head = self._waiting[0]
        batch = [head]
        total = head.size
        for entry in self._waiting[1:]:
            if total >= self.max_batch_size:
                break
            if entry.key == head.key and total + entry.size <= self.max_batch_size:
                batch.append(entry)
                total += entry.size
        for entry in batch:
            self._waiting.remove(entry)
        return batch

    def _compatible_images(self) -> int:
        head = self._waiting[0]
        return sum(entry.size for entry in self._waiting if entry.key == head.key)

    async def _wait_for_window(self) -> None:
        """Until the head's batch is full or the head has waited batch_window_s (see the module rules)."""
        if self._sequential and len(self._waiting) == 1:
            return
        while self._waiting:
            remaining = self._waiting[0].enqueued_at + self.batch_window_s - time.monotonic()
            if remaining <= 0 or self._compatible_images() >= self.max_batch_size:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)

    async def _call(self, items: list[T]) -> Sequence[Result[R]]:
        if self._run_in_loop:
            awaitable = cast(Awaitable[Sequence[Result[R]]], self._run(items))
            return await awaitable
        run = cast(Callable[[list[T]], Sequence[Result[R]]], self._run)
        context = contextvars.copy_context()  # the batch's (BATCH) in the worker thread too
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, run, items)

    async def _work(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_window()
            self._waiting = [entry for entry in self._waiting if not entry.future.cancelled()]
            if not self._waiting:  # everything waiting was cancelled
                continue
            batch = self._take_batch()
            images = sum(entry.size for entry in batch)
            self._running_images = images
            record = Batch.of([(entry.request, entry.size, entry.enqueued_at) for entry in batch])
            token = BATCH.set(record)  # this task's (and so the worker thread's) log lines name the requests
            settling = False
            try:
                results = await self._call([e.item for e in batch])
                record.finish()  # each request's share of the compute time, before anyone reads its result
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:  # stop(): nobody will deliver these results
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(
                            ServiceUnavailableError("The server is shutting down.", retry_after=1)
                        )
                raise
            except Exception as exc:  # the whole batch fails; each waiter gets the error
                if record.ended is None:
                    record.finish()
                record.failed = f"{type(exc).__name__}: {exc}"
                log.exception("batch of %d images failed", images)
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
            else:
                if any(isinstance(result, Future) for result in results):
                    settling = True
                    task = asyncio.get_running_loop().create_task(self._settle(batch, results, record))
                    self._settling.add(task)
                    task.add_done_callback(self._settling.discard)
                else:
                    self._deliver(batch, cast(Sequence[R | BaseException], results))
            finally:
                self._running_images = 0
                self._sequential = len(batch) == 1 and not self._waiting
                if record.ended is not None:
                    log.debug("batch %s: %d image(s) in %.3fs", record.id, images, record.seconds)
                BATCH.reset(token)
            self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * record.seconds
            if self._on_batch is not None and not settling:
                self._on_batch(record)

    @staticmethod
    def _deliver(batch: Sequence[_Entry[T, R]], results: Sequence[R | BaseException]) -> None:
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    async def _settle(self, batch: list[_Entry[T, R]], results: Sequence[Result[R]], record: Batch) -> None:
        """Deliver each result as its future finishes (in batch order), then report the batch."""
        try:
            for entry, result in zip(batch, results, strict=True):
                outcome: R | BaseException
                if isinstance(result, Future):
                    try:
                        outcome = await asyncio.wrap_future(cast("Future[R]", result))
                    except Exception as exc:
                        outcome = exc
                else:
                    outcome = result
                self._deliver([entry], [outcome])
        except asyncio.CancelledError:  # stop()
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(ServiceUnavailableError("The server is shutting down.", retry_after=1))
            raise
        if self._on_batch is not None:
            self._on_batch(record)
