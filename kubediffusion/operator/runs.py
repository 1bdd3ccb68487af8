"""One reconcile per model at a time; a request that finds one running is deferred to after it, not dropped.

A model's change handler (create, update, resume: a thread of kopf's pool) and the workers of the
background queue (:mod:`~kubediffusion.operator.workqueue`: children's events, polls, resyncs) can
want a reconcile of the same model at once. Two at once would race (both post the same Event, apply
the same status), so they are serialised per model, and each kind of caller waits differently:

* a change handler waits its turn (:meth:`Runs.wait_and_run`): kopf reports its outcome;
* a queue worker never waits (:meth:`Runs.run_or_defer`): if a reconcile of the model is running,
  which may have read the children before the change, the model is marked and handed back to the
  queue (``requeue``) as soon as that run ends. Any number of marks during one run make one reconcile
  after it, run by a queue worker: the change handler's thread is free at once (reruns there kept
  kopf's pool busy, and the creation of other models waited), and a model whose children change without
  pause goes to the back of the queue each time instead of holding a thread. A change handler waiting
  its turn takes over instead (its reconcile starts after the marks, so it sees what they were about).

Only models with a run in flight or waiting have an entry (models come and go).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class _Entry:
    turn: threading.Condition  # over the Runs' guard lock
    running: bool = False
    deferred: bool = False  # a request came after the running reconcile started
    waiters: int = 0


@dataclass(frozen=True)
class Busy:
    """What :meth:`Runs.run_or_defer` returns when a run was in flight (the model is requeued after it)."""


class Runs:
    def __init__(self, requeue: Callable[[str], object]) -> None:
        self._requeue = requeue
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(threading.Condition(self._guard))
        return entry

    def wait_and_run(self, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` once no other run of ``key`` is in flight."""
        with self._guard:
            entry = self._entry(key)
            entry.waiters += 1
            while entry.running:
                entry.turn.wait()
            entry.waiters -= 1
            entry.running, entry.deferred = True, False
        return self._run(key, entry, fn)

    def run_or_defer(self, key: str, fn: Callable[[], T]) -> T | Busy:
        """Run ``fn`` now, or have ``key`` requeued once the run in flight ends."""
        with self._guard:
            entry = self._entry(key)
            if entry.running:
                entry.deferred = True
                return Busy()
            entry.running, entry.deferred = True, False
        return self._run(key, entry, fn)

    def _run(self, key: str, entry: _Entry, fn: Callable[[], T]) -> T:
        requeue = False
        try:
            return fn()
        finally:
            with self._guard:
                # Under one lock with the mark: a request either sees the run in flight (and is requeued
                # here) or sees it over (and runs itself). A waiter's run starts after the mark: no requeue.
                entry.running = False
                if entry.waiters:
                    entry.turn.notify()
                else:
                    requeue = entry.deferred
                    del self._entries[key]
            if requeue:
                self._requeue(key)
