"""The usage book and ledgers on their own: UTC days, the ConfigMap data format (and what a hand edit may
have left in it), retention, and a shared ledger's writes: admissions at once, the rest flushed."""

from __future__ import annotations

import json
from datetime import date

import pytest

from kubediffusion.router.ledger import MemoryDocument, MemoryLedger, SharedLedger
from kubediffusion.router.usagebook import Counts, UsageBook, seconds_to_next_day, utc_day
from tests.unit.router.tenancy import LATE_EVENING, WallClock

MAY_1, MAY_2 = date(2024, 5, 1), date(2024, 5, 2)


def test_days_are_utc_and_the_next_one_starts_at_midnight() -> None:
    assert utc_day(LATE_EVENING) == MAY_1 and utc_day(LATE_EVENING + 3600) == MAY_2
    assert seconds_to_next_day(LATE_EVENING) == 3600
    assert seconds_to_next_day(LATE_EVENING + 3600) == 86_400  # at midnight: a whole day
    assert seconds_to_next_day(LATE_EVENING + 3599.5) == 1


def test_the_configmap_format_round_trips_and_ignores_what_it_did_not_write() -> None:
    book = UsageBook()
    book.add(MAY_1, "team-a", "tiny-sd", Counts(requests=2, images=3, megapixels=0.5, gpu_seconds=1.25))
    book.add(MAY_1, "team-a", "tiny-sd", Counts(images=-1, failed_requests=1))
    data = book.to_data()
    assert json.loads(data["2024-05-01"]) == {
        "team-a": {
            "tiny-sd": {"requests": 2, "images": 2, "failed_requests": 1, "megapixels": 0.5, "gpu_seconds": 1.25}
        }
    }
    data.update({"notes": "hand-written", "2024-05-02": "not json", "2024-05-03": '{"t": {"m": {"images": "x"}}}'})
    again = UsageBook.from_data(data)
    assert [(d, t, m, c.images) for d, t, m, c in again.rows()] == [
        (MAY_1, "team-a", "tiny-sd", 2),
        (date(2024, 5, 3), "t", "m", 0),
    ]
    assert again.images(MAY_1, "team-a") == 2


async def test_memory_ledger_keeps_its_retention() -> None:
    wall = WallClock()
    ledger = MemoryLedger(retention_days=2, clock=wall)
    assert await ledger.admit(MAY_1, "t", "m", 2, 2) and not await ledger.admit(MAY_1, "t", "m", 1, 2)
    wall.now += 86_400 * 2  # May 3rd: May 1st is past two days of retention
    assert [row[0] for row in (await ledger.book()).rows()] == []


async def test_a_shared_ledger_writes_admissions_at_once_and_the_rest_when_it_flushes() -> None:
    document, wall = MemoryDocument(), WallClock()
    ledger = SharedLedger(document, clock=wall, retention_days=31)
    assert await ledger.admit(MAY_1, "with-quota", "m", 1, 5)
    writes = document.writes
    assert await ledger.admit(MAY_1, "no-quota", "m", 1, None)
    ledger.record(MAY_1, "with-quota", "m", Counts(requests=1))
    assert document.writes == writes  # waiting for the flush
    assert (await ledger.book()).images(MAY_1, "no-quota") == 1  # but already in this replica's answers
    await ledger.flush()
    stored = UsageBook.from_data(document.data)
    assert stored.images(MAY_1, "no-quota") == 1 and document.writes == writes + 1
    assert [c.requests for d, t, m, c in stored.rows("with-quota")] == [1]
    await ledger.flush()
    assert document.writes == writes + 1  # nothing pending: no write


async def test_a_shared_ledger_keeps_what_it_could_not_write() -> None:
    document, wall = MemoryDocument(), WallClock()
    ledger = SharedLedger(document, clock=wall)
    ledger.record(MAY_1, "t", "m", Counts(requests=1, images=1))
    document.fail = True
    with pytest.raises(Exception, match="unreachable"):
        await ledger.flush()
    document.fail = False
    await ledger.flush()
    assert UsageBook.from_data(document.data).images(MAY_1, "t") == 1
