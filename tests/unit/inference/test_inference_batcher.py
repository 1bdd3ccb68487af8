"""The batcher with a fake generate function: grouping, batch size, window, fairness, queue, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kubediffusion.api.errors import QueueFullError, ServiceUnavailableError
from kubediffusion.inference.batcher import Batcher

pytestmark = pytest.mark.timeout(20)


@dataclass(frozen=True)
class Item:
    name: str
    key: str = "a"
    n: int = 1


class FakeRun:
    """Records each batch; can hold the worker thread on a gate to build up a queue."""

    def __init__(self, *, hold: bool = False, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.gate.set()
        self.fail = fail

    def __call__(self, items: list[Item]) -> list[str]:
        self.batches.append([item.name for item in items])
        self.started.set()
        assert self.gate.wait(10), "test never released the gate"
        if self.fail:
            raise RuntimeError("pipeline exploded")
        return [f"result-{item.name}" for item in items]


def make(run: FakeRun, *, max_batch_size: int = 4, window_s: float = 0.05, max_queue: int = 16) -> Batcher[Item, str]:
    return Batcher(
        run,
        key=lambda item: item.key,
        size=lambda item: item.n,
        max_batch_size=max_batch_size,
        batch_window_s=window_s,
        max_queue=max_queue,
    )


@pytest.fixture
async def held() -> AsyncIterator[tuple[FakeRun, Batcher[Item, str]]]:
    run = FakeRun(hold=True)
    batcher = make(run)
    batcher.start()
    yield run, batcher
    run.gate.set()
    await batcher.stop()


async def occupy_worker(run: FakeRun, batcher: Batcher[Item, str]) -> asyncio.Task[str]:
    """Submit a blocker and wait until the worker thread is inside run(); the queue then fills."""
    task = asyncio.create_task(batcher.submit(Item("blocker", key="blocker")))
    await asyncio.wait_for(asyncio.to_thread(run.started.wait, 5), 6)
    return task


async def wait_until(predicate: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_same_key_requests_share_one_batch() -> None:
    run = FakeRun()
    batcher = make(run, window_s=0.2)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(Item(f"r{i}")) for i in range(3)))
    await batcher.stop()
    assert results == ["result-r0", "result-r1", "result-r2"]
    assert run.batches == [["r0", "r1", "r2"]]


async def test_different_keys_never_share_a_batch() -> None:
    run = FakeRun()
    batcher = make(run, window_s=0.1)
    batcher.start()
    await asyncio.gather(
        batcher.submit(Item("a1", "a")), batcher.submit(Item("b1", "b")), batcher.submit(Item("a2", "a"))
    )
    await batcher.stop()
    assert run.batches == [["a1", "a2"], ["b1"]]


async def test_batches_hold_at_most_max_batch_size_images() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=4, window_s=0.1)
    batcher.start()
    await asyncio.gather(*(batcher.submit(Item(f"r{i}", n=2)) for i in range(5)))
    await batcher.stop()
    assert run.batches == [["r0", "r1"], ["r2", "r3"], ["r4"]]


async def test_request_with_n_images_rides_whole_and_larger_than_batch_runs_alone() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=4, window_s=0.1)
    batcher.start()
    await asyncio.gather(
        batcher.submit(Item("three", n=3)), batcher.submit(Item("one")), batcher.submit(Item("six", n=6))
    )
    await batcher.stop()
    assert run.batches == [["three", "one"], ["six"]]


async def test_full_batch_starts_without_waiting_for_the_window() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=2, window_s=5.0)
    batcher.start()
    started = time.monotonic()
    await asyncio.gather(batcher.submit(Item("r0")), batcher.submit(Item("r1")))
    assert time.monotonic() - started < 2.0
    await batcher.stop()
    assert run.batches == [["r0", "r1"]]


async def test_lone_request_in_sequential_traffic_starts_at_once() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=8, window_s=0.5)
    batcher.start()
    await batcher.submit(Item("first"))  # no history yet: waits the window
    for name in ("second", "third"):
        started = time.monotonic()
        await batcher.submit(Item(name))
        assert time.monotonic() - started < 0.4
    await batcher.stop()
    assert run.batches == [["first"], ["second"], ["third"]]


async def test_after_concurrent_traffic_a_lone_request_waits_at_most_the_window() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=8, window_s=0.15)
    batcher.start()
    await asyncio.gather(batcher.submit(Item("a")), batcher.submit(Item("b")))
    started = time.monotonic()
    await batcher.submit(Item("alone"))
    elapsed = time.monotonic() - started
    await batcher.stop()
    assert 0.1 <= elapsed < 2.0
    assert run.batches == [["a", "b"], ["alone"]]


async def test_request_arriving_after_the_window_goes_in_the_next_batch() -> None:
    run = FakeRun()
    batcher = make(run, max_batch_size=8, window_s=0.05)
    batcher.start()
    first = asyncio.create_task(batcher.submit(Item("early")))
    await first
    await batcher.submit(Item("late"))
    await batcher.stop()
    assert run.batches == [["early"], ["late"]]


async def test_oldest_waiting_request_leads_the_next_batch(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    tasks = [
        asyncio.create_task(batcher.submit(item))
        for item in (Item("b1", "b"), Item("a1", "a"), Item("a2", "a"), Item("b2", "b"), Item("a3", "a"))
    ]
    await wait_until(lambda: batcher.queued_requests == 5)
    run.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert run.batches == [["blocker"], ["b1", "b2"], ["a1", "a2", "a3"]]


async def test_queue_full_is_429_with_retry_after(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    waiting = [asyncio.create_task(batcher.submit(Item(f"q{i}", n=4))) for i in range(4)]
    await wait_until(lambda: batcher.queued_images == 16)
    with pytest.raises(QueueFullError) as caught:
        await batcher.submit(Item("one-too-many"))
    assert caught.value.status_code == 429
    assert int(caught.value.headers()["Retry-After"]) >= 1
    run.gate.set()
    await asyncio.gather(blocker, *waiting)


async def test_request_larger_than_the_queue_is_served_when_the_queue_is_empty() -> None:
    run = FakeRun()
    batcher = make(run, max_queue=2, window_s=0.0)
    batcher.start()
    assert await batcher.submit(Item("big", n=5)) == "result-big"
    await batcher.stop()


async def test_cancelled_waiting_request_is_dropped_before_it_runs(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    gone = asyncio.create_task(batcher.submit(Item("gone")))
    stays = asyncio.create_task(batcher.submit(Item("stays")))
    await wait_until(lambda: batcher.queued_requests == 2)
    gone.cancel()
    await wait_until(lambda: batcher.queued_requests == 1)
    assert batcher.queued_images == 1
    run.gate.set()
    assert await stays == "result-stays"
    await blocker
    assert run.batches == [["blocker"], ["stays"]]


async def test_failed_batch_fails_each_of_its_requests() -> None:
    run = FakeRun(fail=True)
    batcher = make(run, window_s=0.05)
    batcher.start()
    results = await asyncio.gather(batcher.submit(Item("x")), batcher.submit(Item("y")), return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    run.fail = False
    assert await batcher.submit(Item("after")) == "result-after"  # the worker survives a failure
    await batcher.stop()


async def test_event_loop_keeps_running_while_a_batch_runs(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not blocker.done()
    run.gate.set()
    await blocker


async def test_stop_fails_waiting_requests_with_503(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    waiting = asyncio.create_task(batcher.submit(Item("w")))
    await wait_until(lambda: batcher.queued_requests == 1)
    run.gate.set()
    await batcher.stop()
    with pytest.raises(ServiceUnavailableError):
        await waiting
    await asyncio.gather(blocker, return_exceptions=True)


async def test_a_group_is_queued_all_or_none(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    batcher.max_queue = 4
    blocker = await occupy_worker(run, batcher)
    first = batcher.enqueue([Item("a", n=2)])
    with pytest.raises(QueueFullError):
        batcher.enqueue([Item("b"), Item("c", n=2)])  # 2 + 3 > 4: neither is queued
    assert (batcher.queued_requests, batcher.queued_images) == (1, 2)
    group = batcher.enqueue([Item("d"), Item("e")])  # 2 + 2 fits
    run.gate.set()
    assert await asyncio.gather(*first, *group) == ["result-a", "result-d", "result-e"]
    await blocker
    assert run.batches == [["blocker"], ["a", "d", "e"]]


async def test_cancelling_enqueued_futures_frees_their_places_at_once(held: tuple[FakeRun, Batcher[Item, str]]) -> None:
    run, batcher = held
    blocker = await occupy_worker(run, batcher)
    gone = batcher.enqueue([Item("gone"), Item("gone-too")])
    stays = batcher.enqueue([Item("stays")])
    batcher.cancel(gone)
    assert (batcher.queued_requests, all(future.cancelled() for future in gone)) == (1, True)
    dropped = batcher.enqueue([Item("dropped")])
    dropped[0].cancel()  # a plain cancel: the entry leaves the queue on the next loop iteration
    await wait_until(lambda: batcher.queued_requests == 1)
    run.gate.set()
    assert await stays[0] == "result-stays"
    await blocker
    assert run.batches == [["blocker"], ["stays"]]
