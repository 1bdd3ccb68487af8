"""Daily image quotas: images counted (n, and n per input image of an edit), a spent quota is OpenAI's 429
insufficient_quota with a Retry-After at the next UTC midnight, failed requests give their images back;
exact for one replica, and across replicas exactly when they share a ledger (and per replica when not)."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.router.ledger import MemoryDocument, MemoryLedger, SharedLedger
from kubediffusion.router.routing import ModelEntry
from tests.unit.router.tenancy import A_KEY, B_KEY, MODELS, WallClock, bearer, tenants_file
from tests.unit.router.uploads import form, png

GEN = "/v1/images/generations"
TINY_POD = "http://127.0.9.1:8000"


async def generate(client: httpx.AsyncClient, n: int = 1, key: str = A_KEY, **extra: Any) -> httpx.Response:
    return await client.post(GEN, json={"prompt": "x", "model": "tiny-sd", "n": n, **extra}, headers=bearer(key))


async def test_the_third_image_of_a_two_a_day_quota_is_insufficient_quota_until_midnight_utc(
    router: Any, tmp_path: Path
) -> None:
    wall = WallClock()  # 23:00 UTC
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=wall) as client:
        first, second, third = [await generate(client) for _ in range(3)]
        other_tenant = await generate(client, key=B_KEY, model="sdxl-turbo")
        wall.now += 3600  # 00:00 UTC: a new day
        next_day = await generate(client)
    assert first.status_code == second.status_code == 200
    assert third.status_code == 429
    assert third.json()["error"] == {
        "message": third.json()["error"]["message"],
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert "quota of 2 images per day" in third.json()["error"]["message"]
    assert third.headers["retry-after"] == "3600" and third.headers["x-should-retry"] == "false"
    assert other_tenant.status_code == 200 and next_day.status_code == 200


async def test_quota_counts_images_not_requests(router: Any, tmp_path: Path, pods: Any) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        too_many = await generate(client, n=3)
        two = await generate(client, n=2)
        one_more = await generate(client, n=1)
    assert too_many.status_code == 429 and two.status_code == 200 and one_more.status_code == 429
    assert pods.hits() == 1  # refused requests never reach a pod


async def test_an_edit_of_two_images_counts_two(router: Any, tmp_path: Path) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        image = ("a.png", png(), "image/png")
        body, headers = form({"prompt": "a hat", "model": "tiny-sd"}, [("image[]", image), ("image[]", image)])
        edit = await client.post("/v1/images/edits", content=body, headers={**headers, **bearer(A_KEY)})
        after = await generate(client)
    assert edit.status_code == 200 and len(edit.json()["data"]) == 2
    assert after.status_code == 429


async def test_refused_and_failed_requests_spend_nothing(router: Any, tmp_path: Path, pods: Any) -> None:
    pods.behaviour[TINY_POD] = lambda request: httpx.Response(500, json={"error": {"message": "boom"}})
    down = ModelEntry(name="tiny-down", endpoints=())
    async with router([*MODELS, down], tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        failed = [await generate(client) for _ in range(3)]
        invalid = await generate(client, n=0)
        no_pod = await client.post(GEN, json={"prompt": "x", "model": "tiny-down"}, headers=bearer(A_KEY))
        del pods.behaviour[TINY_POD]
        served = [await generate(client) for _ in range(2)]
        refused = await generate(client)
    assert [a.status_code for a in failed] == [500] * 3
    assert invalid.status_code == 400 and no_pod.status_code == 503
    assert [a.status_code for a in served] == [200, 200] and refused.status_code == 429


async def test_concurrent_requests_cannot_overspend_the_quota(router: Any, tmp_path: Path, pods: Any) -> None:
    release = asyncio.Event()
    seen: list[httpx.Request] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await release.wait()
        return pods.ok(request)

    pods.behaviour[TINY_POD] = slow
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        tasks = [asyncio.create_task(generate(client)) for _ in range(4)]
        finished, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        while len(finished) < 2:  # the two refused ones end while the two admitted ones wait for their pod
            more, _ = await asyncio.wait(set(tasks) - finished, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            finished |= more
        assert len(seen) == 2 and all(task.result().status_code == 429 for task in finished)
        release.set()
        answers = await asyncio.gather(*tasks)
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
    assert len(seen) == 2


async def test_replicas_sharing_a_ledger_share_the_quota_exactly(router: Any, tmp_path: Path) -> None:
    document, wall = MemoryDocument(), WallClock()
    path = tenants_file(tmp_path)
    one = SharedLedger(document, clock=wall, flush_seconds=3600)
    two = SharedLedger(document, clock=wall, flush_seconds=3600)
    async with (
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=one) as first,
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=two) as second,
    ):
        answers = await asyncio.gather(generate(first), generate(second), generate(first), generate(second))
        usage_two = (await second.get("/v1/usage", headers=bearer("sk-ops-admin"))).json()
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
    assert usage_two["scope"] == "cluster"
    day = json.loads(document.data["2024-05-01"])
    assert day["team-a"]["tiny-sd"]["images"] == 2  # written before the requests went to a pod
    assert day["team-a"]["tiny-sd"]["requests"] == 2  # and the successes by the last flush (at shutdown)


async def test_a_refund_on_one_replica_frees_the_quota_for_the_others_after_a_flush(
    router: Any, tmp_path: Path, pods: Any
) -> None:
    document, wall = MemoryDocument(), WallClock()
    path = tenants_file(tmp_path)
    one = SharedLedger(document, clock=wall, flush_seconds=3600)
    two = SharedLedger(document, clock=wall, flush_seconds=3600)
    async with (
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=one) as first,
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=two) as second,
    ):
        pods.behaviour[TINY_POD] = lambda request: httpx.Response(503, json={"error": {"message": "busy"}})
        failed = await generate(first, n=2)
        refused_before_flush = await generate(second)
        await one.flush()
        del pods.behaviour[TINY_POD]
        served = await generate(second, n=2)
    assert failed.status_code == 503 and refused_before_flush.status_code == 429  # never overspent meanwhile
    assert served.status_code == 200


async def test_replicas_with_their_own_memory_ledgers_each_allow_the_whole_quota(router: Any, tmp_path: Path) -> None:
    """The documented per-replica behaviour without a shared ledger: N replicas, up to N times the quota."""
    wall = WallClock()
    path = tenants_file(tmp_path)
    async with (
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=MemoryLedger(clock=wall)) as first,
        router(MODELS, tenants_file=path, wall_clock=wall, ledger=MemoryLedger(clock=wall)) as second,
    ):
        on_first = [(await generate(first)).status_code for _ in range(3)]
        on_second = [(await generate(second)).status_code for _ in range(3)]
        usage = (await first.get("/v1/usage", headers=bearer("sk-ops-admin"))).json()
    assert on_first == on_second == [200, 200, 429]
    assert usage["scope"] == "replica" and usage["totals"][0]["images"] == 2


async def test_conflicting_writes_are_retried_and_stay_exact() -> None:
    document, wall = MemoryDocument(), WallClock()
    ledgers = [SharedLedger(document, clock=wall) for _ in range(4)]
    day = date(2024, 5, 1)
    results = await asyncio.gather(*(ledger.admit(day, "t", "m", 1, 10) for ledger in ledgers for _ in range(5)))
    assert sum(results) == 10 and document.conflicts > 0
    assert json.loads(document.data["2024-05-01"])["t"]["m"]["images"] == 10


async def test_without_its_store_a_quota_cannot_be_checked_and_is_refused_but_others_are_served(
    router: Any, tmp_path: Path
) -> None:
    document, wall = MemoryDocument(), WallClock()
    ledger = SharedLedger(document, clock=wall, flush_seconds=3600)
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=wall, ledger=ledger) as client:
        document.fail = True
        with_quota = await generate(client)
        without_quota = await generate(client, key=B_KEY, model="sdxl-turbo")
        document.fail = False
        await ledger.flush()
    assert with_quota.status_code == 503 and with_quota.json()["error"]["code"] == "quota_unavailable"
    assert with_quota.headers["retry-after"] == "5"
    assert without_quota.status_code == 200
    counted = json.loads(document.data["2024-05-01"])["team-b"]["sdxl-turbo"]
    width, height = GenerationDefaults().width_height
    steps = GenerationDefaults().steps
    assert counted == {"images": 1, "requests": 1, "megapixels": width * height / 1e6, "denoising_steps": steps}
