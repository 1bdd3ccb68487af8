"""The background queue: a model waits at most once, one added while handled comes back, polls are delayed adds."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from kubediffusion.operator.workqueue import WorkQueue, start_workers


def test_a_waiting_key_is_not_added_twice_and_keys_come_in_order() -> None:
    queue = WorkQueue()
    for key in ("ns/a", "ns/b", "ns/a", "ns/a", "ns/c"):
        queue.add(key)
    assert len(queue) == 3
    assert [queue.get(), queue.get(), queue.get()] == ["ns/a", "ns/b", "ns/c"]


def test_a_key_added_while_handled_comes_back_once_after_it_at_the_back() -> None:
    queue = WorkQueue()
    queue.add("ns/a")
    queue.add("ns/b")
    assert queue.get() == "ns/a"
    queue.add("ns/a")
    queue.add("ns/a")
    assert len(queue) == 1, "not twice in the queue while a worker has it"
    queue.done("ns/a")
    assert len(queue) == 2, "ns/a is back"
    assert [queue.get(), queue.get()] == ["ns/b", "ns/a"], "other models get their turn first"
    queue.done("ns/b")
    queue.done("ns/a")
    assert len(queue) == 0 and queue.join(0)


def test_a_delayed_add_is_due_after_its_delay_and_a_later_one_replaces_it() -> None:
    queue = WorkQueue()
    queue.add_after("ns/a", 0.05)
    started = time.monotonic()
    assert queue.get() == "ns/a" and time.monotonic() - started >= 0.04
    queue.done("ns/a")
    queue.add_after("ns/a", 0.05)
    queue.add_after("ns/a", 10)  # a reconcile just ran: the next poll is due from now
    due = queue.due_in("ns/a")
    assert due is not None and due > 9
    queue.forget_later("ns/a")  # settled: no poll at all
    assert queue.due_in("ns/a") is None


def test_a_delayed_add_of_a_key_being_handled_comes_back_after_it() -> None:
    queue = WorkQueue()
    queue.add("ns/a")
    assert queue.get() == "ns/a"
    queue.add_after("ns/a", 0.01)
    queue.add("ns/b")
    time.sleep(0.02)
    assert queue.get() == "ns/b"  # ns/a is due but still handled
    queue.done("ns/a")
    assert len(queue) == 1, "ns/a is back"
    assert queue.get() == "ns/a"


def test_close_wakes_the_workers_and_drops_what_waits() -> None:
    queue = WorkQueue()
    got: list[str | None] = []
    thread = threading.Thread(target=lambda: got.append(queue.get()))
    thread.start()
    queue.close()
    thread.join(5)
    assert got == [None]
    queue.add("ns/a")
    queue.add_after("ns/a", 0)
    assert queue.get() is None and len(queue) == 0


def test_workers_handle_keys_and_log_a_failure_without_dying(caplog: pytest.LogCaptureFixture) -> None:
    queue = WorkQueue()
    handled: list[str] = []

    def handle(key: str) -> None:
        handled.append(key)
        if key == "ns/bad":
            raise RuntimeError("boom")

    start_workers(queue, 2, handle)
    with caplog.at_level(logging.ERROR):
        for key in ("ns/bad", "ns/a", "ns/b"):
            queue.add(key)
        assert queue.join(5)
    queue.add("ns/c")
    assert queue.join(5)
    queue.close()
    assert sorted(handled) == ["ns/a", "ns/b", "ns/bad", "ns/c"]
    assert "ns/bad" in caplog.text


def test_no_add_is_lost_and_one_key_is_never_handled_twice_at_once() -> None:
    # Each add bumps the key's version before it adds; a handle records the version it saw when it
    # started. Whatever the interleaving, the last handle of each key saw its final version.
    queue = WorkQueue()
    guard = threading.Lock()
    versions = {f"ns/m{i}": 0 for i in range(5)}
    seen: dict[str, list[int]] = {key: [] for key in versions}
    active: set[str] = set()

    def handle(key: str) -> None:
        with guard:
            assert key not in active, "one key handled by two workers at once"
            active.add(key)
            seen[key].append(versions[key])
        time.sleep(0.001)
        with guard:
            active.discard(key)

    start_workers(queue, 4, handle)

    def events(key: str) -> None:
        for _ in range(200):
            with guard:
                versions[key] += 1
            queue.add(key)

    threads = [threading.Thread(target=events, args=(key,)) for key in versions for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert queue.join(30)
    queue.close()
    for key, versions_seen in seen.items():
        assert versions_seen[-1] == versions[key] == 400, key
        assert len(versions_seen) < 400, "adds while waiting or handled were coalesced"


def test_due_polls_give_way_to_events_and_an_event_overtakes_a_poll() -> None:
    queue = WorkQueue()
    for key in ("ns/p1", "ns/p2", "ns/p3"):
        queue.add_after(key, 0)
    queue.add("ns/e1")
    assert queue.get() == "ns/e1", "an event's model first"
    queue.add("ns/p3")  # a model waiting for its poll has an event: it moves to the events' lane
    assert [queue.get(), queue.get(), queue.get()] == ["ns/p3", "ns/p1", "ns/p2"]
    assert len(queue) == 0


def test_adds_within_a_moment_gather_into_one_and_keep_the_earliest_time() -> None:
    queue = WorkQueue()
    queue.add("ns/a", within=0.05)
    queue.add("ns/a", within=10)  # a later event does not push the first one's time back
    assert len(queue) == 0, "not yet"
    started = time.monotonic()
    assert queue.get() == "ns/a" and time.monotonic() - started < 5
    queue.done("ns/a")
    queue.add("ns/b", within=10)
    queue.add("ns/b")  # now: no wait
    assert len(queue) == 1 and queue.get() == "ns/b"
