"""One reconcile per model at a time; a request during one is deferred to after it (requeued), never dropped."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from kubediffusion.operator.runs import Busy, Runs
from kubediffusion.operator.workqueue import WorkQueue, start_workers


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(500):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out: {what}")


class Blocking:
    """A reconcile that blocks until released; counts its calls and whether two ever overlapped."""

    def __init__(self) -> None:
        self.calls = 0
        self.active = 0
        self.overlapped = False
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.overlapped |= self.active > 1
            call = self.calls
        self.started.release()
        assert self.release.acquire(timeout=5), "never released"
        with self._lock:
            self.active -= 1
        return call


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


# The per-model locks these replace kept the same promises: tested here on Runs.


def test_an_entry_lives_only_while_a_run_is_in_flight_or_waited_for() -> None:
    runs = Runs(requeue=lambda key: None)
    for i in range(1000):  # models come and go: the map must not keep one entry per name ever seen
        assert runs.wait_and_run(f"ns/m{i}", lambda: len(runs) == 1)
    assert len(runs) == 0

    def outer() -> bool:
        assert runs.run_or_defer("ns/m", lambda: False) == Busy(), "the same model does not run twice at once"
        assert runs.run_or_defer("ns/other", lambda: len(runs) == 2), "other models are not blocked"
        assert len(runs) == 1
        return True

    assert runs.wait_and_run("ns/m", outer)
    assert len(runs) == 0


def test_a_waiter_runs_after_the_holder_and_gets_the_entry() -> None:
    runs = Runs(requeue=lambda key: None)
    fn = Blocking()
    holder, first = in_thread(lambda: runs.wait_and_run("ns/m", fn))
    assert fn.started.acquire(timeout=5)
    waiter, second = in_thread(lambda: runs.wait_and_run("ns/m", fn))
    wait_until(lambda: runs._entries["ns/m"].waiters == 1, "the waiter is counted on the entry")
    assert fn.calls == 1, "the waiter does not run while the holder does"
    fn.release.release()
    assert fn.started.acquire(timeout=5)
    fn.release.release()
    holder.join(5)
    waiter.join(5)
    assert (first, second) == ([1], [2]) and not fn.overlapped and len(runs) == 0


def test_the_entry_is_released_when_the_reconcile_raises() -> None:
    runs = Runs(requeue=lambda key: None)

    def boom() -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runs.wait_and_run("ns/m", boom)
    assert runs.run_or_defer("ns/m", lambda: 7) == 7
    assert len(runs) == 0


# Requests while a run is in flight.


def test_requests_during_a_run_are_requeued_once_after_it() -> None:
    requeued: list[str] = []
    runs = Runs(requeue=requeued.append)
    fn = Blocking()
    thread, result = in_thread(lambda: runs.wait_and_run("ns/m", fn))
    assert fn.started.acquire(timeout=5)
    assert [runs.run_or_defer("ns/m", fn) for _ in range(5)] == [Busy()] * 5
    assert requeued == [], "not while the run is in flight"
    fn.release.release()
    thread.join(5)
    assert result == [1] and fn.calls == 1, "the change handler's thread does not rerun"
    assert requeued == ["ns/m"], "five requests, one reconcile after the run (by a queue worker)"
    assert runs.run_or_defer("ns/m", lambda: 9) == 9, "a request after the run ended runs at once"
    assert requeued == ["ns/m"] and len(runs) == 0


def test_a_run_without_requests_meanwhile_is_not_requeued() -> None:
    requeued: list[str] = []
    runs = Runs(requeue=requeued.append)
    assert runs.wait_and_run("ns/m", lambda: 1) == 1
    assert runs.run_or_defer("ns/m", lambda: 2) == 2
    assert requeued == []


def test_a_deferred_request_is_requeued_even_if_the_run_fails() -> None:
    requeued: list[str] = []
    runs = Runs(requeue=requeued.append)
    started, release = threading.Event(), threading.Event()

    def failing() -> int:
        started.set()
        release.wait(5)
        raise RuntimeError("503")

    def change_handler() -> None:
        with pytest.raises(RuntimeError):
            runs.wait_and_run("ns/m", failing)

    thread, _ = in_thread(change_handler)
    assert started.wait(5)
    assert runs.run_or_defer("ns/m", lambda: 0) == Busy()
    release.set()
    thread.join(5)
    assert requeued == ["ns/m"]


def test_a_waiting_change_handler_takes_over_instead_of_a_requeue() -> None:
    requeued: list[str] = []
    runs = Runs(requeue=requeued.append)
    fn = Blocking()
    holder, _ = in_thread(lambda: runs.wait_and_run("ns/m", fn))
    assert fn.started.acquire(timeout=5)
    assert runs.run_or_defer("ns/m", fn) == Busy()
    waiter, second = in_thread(lambda: runs.wait_and_run("ns/m", fn))
    wait_until(lambda: runs._entries["ns/m"].waiters == 1, "the change handler waits")
    fn.release.release()
    assert fn.started.acquire(timeout=5)
    fn.release.release()
    holder.join(5)
    waiter.join(5)
    assert fn.calls == 2 and second == [2] and requeued == [], "the waiter's run started after the request"


def test_no_request_is_lost_under_concurrent_requests() -> None:
    # Each request bumps a version; a run records the version it saw when it started. Whatever the
    # interleaving, some run must start after the last request: the last run saw the final version.
    version = 0
    seen: list[int] = []
    guard = threading.Lock()
    active = 0

    def reconcile() -> int:
        nonlocal active
        with guard:
            active += 1
            assert active == 1, "two runs of one model overlapped"
            seen.append(version)
        threading.Event().wait(0.001)
        with guard:
            active -= 1
        return 0

    queue = WorkQueue()
    runs = Runs(requeue=queue.add)
    start_workers(queue, 2, lambda key: runs.run_or_defer(key, reconcile))

    def requests() -> None:
        nonlocal version
        for _ in range(200):
            with guard:
                version += 1
            runs.run_or_defer("ns/m", reconcile)

    threads = [threading.Thread(target=requests) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert queue.join(30)
    queue.close()
    assert seen[-1] == version == 1600
    assert len(seen) < 1600, "requests during a run were coalesced"
    assert len(runs) == 0
