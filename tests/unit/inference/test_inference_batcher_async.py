"""The batcher with a coroutine run function (an engine adapter): awaited in the event loop, one batch
at a time, and a result that is an exception fails only its own item."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kubediffusion.inference.batcher import Batcher

pytestmark = pytest.mark.timeout(20)


async def test_a_coroutine_run_is_awaited_in_the_loop_and_one_failed_item_fails_alone() -> None:
    threads: list[str] = []
    batches: list[list[str]] = []

    async def run(items: list[str]) -> list[str | BaseException]:
        threads.append(threading.current_thread().name)
        batches.append(items)
        await asyncio.sleep(0.01)
        return [ValueError(f"{item} failed") if item == "bad" else f"ok-{item}" for item in items]

    batcher: Batcher[str, str] = Batcher(
        run, key=lambda _: "k", size=lambda _: 1, max_batch_size=4, batch_window_s=0.05, max_queue=16
    )
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(item) for item in ("a", "bad", "c")), return_exceptions=True)
    finally:
        await batcher.stop()
    assert results[0] == "ok-a" and results[2] == "ok-c"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad failed"
    assert batches == [["a", "bad", "c"]]
    assert threads == [threading.current_thread().name]  # the loop's thread, not the pipeline worker
