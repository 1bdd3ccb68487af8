"""Models to reconcile in the background: each waits at most once (controller-runtime's workqueue, small).

A model is added when one of its children changes (an event), when it is still converging
(``add_after`` the poll interval) and at each periodic resync. Run one reconcile per event or per
poll, as kopf's per-event handlers and per-model timers would, and a busy operator falls behind
without bound: 50 models polled every second while each reconcile waits a second for a loaded API
server need 50 threads, and the creation of a new model waits behind those polls. Here a key that
already waits is not added twice, so under load the events and polls of a model collapse into one
reconcile, and a fixed number of workers take keys in order. A key added while a worker handles it
is queued again once the worker is done, at the back (other models get their turn): no event is lost.
A poll is due ``delay`` after the last reconcile of the model, whatever caused it; an event's
reconcile pushes it back, so a model whose children report their progress is not polled at all. Due
polls wait in a lane of their own that workers take from only when no event waits: when the operator
cannot keep up, polls (a safety net for changes no event shows) give way to the changes that events
report, instead of delaying them by a full round of polls of every converging model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: dict[str, None] = {}  # insertion-ordered set: added now (events, resyncs)
        self._polls: dict[str, None] = {}  # the same, for due polls: taken only when nothing else waits
        self._working: set[str] = set()
        self._again: set[str] = set()  # added while being worked on
        self._soon: dict[str, float] = {}  # key -> when it is due (clock): events, gathered for a moment
        self._later: dict[str, float] = {}  # the same for polls (a later request replaces an earlier one)
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting) + len(self._polls)

    def add(self, key: str, *, within: float = 0.0) -> None:
        """Queue ``key`` now, or at the latest in ``within`` seconds (adds meanwhile join it: a burst of
        events of one model, as a rollout makes, is one reconcile)."""
        with self._cond:
            if within <= 0:
                self._soon.pop(key, None)
                self._enqueue(key)
            elif not self._closed and key not in self._waiting:
                due = self._clock() + within
                if due < self._soon.get(key, due + 1):
                    self._soon[key] = due
                    self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` in ``delay`` seconds; replaces an earlier such request (a poll after the last reconcile)."""
        with self._cond:
            if not self._closed:
                self._later[key] = self._clock() + delay
                self._cond.notify()  # a worker waiting for the next due key looks again

    def forget_later(self, key: str) -> None:
        with self._cond:
            self._later.pop(key, None)

    def due_in(self, key: str) -> float | None:
        """Seconds until ``key`` is added again by :meth:`add_after`, if it will be."""
        with self._cond:
            at = self._later.get(key)
            return None if at is None else at - self._clock()

    def get(self) -> str | None:
        """The next key (the caller then owns it until :meth:`done`); None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = self._clock()
                for delayed, poll in ((self._soon, False), (self._later, True)):
                    for key in [k for k, at in delayed.items() if at <= now]:
                        del delayed[key]
                        self._enqueue(key, poll=poll)
                for lane in (self._waiting, self._polls):
                    if lane:
                        key = next(iter(lane))
                        del lane[key]
                        self._working.add(key)
                        return key
                due = [*self._soon.values(), *self._later.values()]
                self._cond.wait(min(due) - now if due else None)

    def done(self, key: str) -> None:
        with self._cond:
            self._working.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._enqueue(key)
            self._cond.notify_all()  # a worker for the key queued again, or someone in join()

    def join(self, timeout: float) -> bool:
        """Wait until no key waits or is being worked on (delayed ones aside); whether that happened in time."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._waiting and not self._polls and not self._working, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._polls.clear()
            self._soon.clear()
            self._later.clear()
            self._cond.notify_all()

    def _enqueue(self, key: str, *, poll: bool = False) -> None:  # under the lock
        if self._closed or key in self._waiting or (poll and key in self._polls):
            return
        if key in self._working:
            self._again.add(key)
            return
        self._polls.pop(key, None)  # an event overtakes the model's poll
        (self._polls if poll else self._waiting)[key] = None
        self._cond.notify()


def start_workers(queue: WorkQueue, count: int, handle: Callable[[str], object]) -> list[threading.Thread]:
    """``count`` daemon threads that handle keys until the queue is closed; a failure is logged, not fatal."""

    def work() -> None:
        while (key := queue.get()) is not None:
            try:
                handle(key)
            except Exception:
                log.exception("reconcile of %s failed", key)
            finally:
                queue.done(key)

    threads = [threading.Thread(target=work, name=f"reconcile-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads
