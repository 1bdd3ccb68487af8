"""Per-tenant rate limits: one bucket per tenant (all its keys share it), with the tenant's own rate and
burst or the router's per-key default; tenants never spend each other's tokens; the key file keeps
its per-key buckets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.unit.router.tenancy import (
    A_HASHED_KEY,
    A_KEY,
    B_KEY,
    MODELS,
    TENANTS,
    bearer,
    tenants_file,
    write_file,
)

GEN = "/v1/images/generations"
NO_QUOTA = TENANTS.replace("    quota: {imagesPerDay: 2}\n", "")


async def generate(client: httpx.AsyncClient, key: str, model: str) -> int:
    answer = await client.post(GEN, json={"prompt": "x", "model": model}, headers=bearer(key))
    return answer.status_code


async def test_a_tenants_own_limit_with_retry_after_and_refill(router: Any, tmp_path: Path, clock: Any) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path, NO_QUOTA), rate_limit_rps=100) as client:
        codes = [await generate(client, B_KEY, "sdxl-turbo") for _ in range(3)]  # rps 1, burst 2
        refused = await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo"}, headers=bearer(B_KEY))
        other = await generate(client, A_KEY, "tiny-sd")  # team-a's bucket is its own
        clock.advance(1.0)
        refilled = await generate(client, B_KEY, "sdxl-turbo")
    assert codes == [200, 200, 429]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and refused.headers["retry-after"] == "1"
    assert "your tenant" in refused.json()["error"]["message"]
    assert other == 200 and refilled == 200


async def test_every_key_of_a_tenant_shares_its_bucket_with_the_default_limit(router: Any, tmp_path: Path) -> None:
    async with router(
        MODELS, tenants_file=tenants_file(tmp_path, NO_QUOTA), rate_limit_rps=1, rate_limit_burst=3
    ) as client:
        codes = [
            await generate(client, A_KEY, "tiny-sd"),
            await generate(client, A_HASHED_KEY, "tiny-sd"),
            await generate(client, A_KEY, "tiny-sd"),
            await generate(client, A_HASHED_KEY, "tiny-sd"),
        ]
    assert codes == [200, 200, 200, 429]


async def test_an_edited_limit_applies_to_the_existing_bucket(router: Any, tmp_path: Path) -> None:
    path = tenants_file(tmp_path, NO_QUOTA)
    async with router(MODELS, tenants_file=path) as client:
        first = [await generate(client, B_KEY, "sdxl-turbo") for _ in range(3)]
        write_file(path, NO_QUOTA.replace("rateLimit: {rps: 1, burst: 2}", "rateLimit: {rps: 0}"), stamp=2)
        unlimited = [await generate(client, B_KEY, "sdxl-turbo") for _ in range(30)]
    assert first == [200, 200, 429]
    assert set(unlimited) == {200}  # rps 0: no limit of its own


async def test_the_key_file_keeps_one_bucket_per_key(router: Any, tmp_path: Path) -> None:
    keys = write_file(tmp_path / "keys", "sk-one\nsk-two\n")
    async with router(MODELS, api_keys_file=keys, rate_limit_rps=1, rate_limit_burst=2) as client:
        one = [await generate(client, "sk-one", "tiny-sd") for _ in range(3)]
        two = [await generate(client, "sk-two", "tiny-sd") for _ in range(3)]
    assert one == two == [200, 200, 429]
