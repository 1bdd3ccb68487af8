from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.api.errors import RateLimitError
from kubediffusion.router.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    for _ in range(3):
        assert bucket.wait_time(0) == 0
        bucket.take()
    assert bucket.wait_time(0) == pytest.approx(0.5)
    assert bucket.wait_time(0.5) == 0
    assert bucket.wait_time(100) == 0 and bucket.tokens == 3  # never above the burst


def test_limiter_per_caller_with_retry_after() -> None:
    clock = FakeClock(0)
    limiter = RateLimiter(rate=10, burst=25, clock=clock)
    for _ in range(25):
        limiter.check("key:a")
    with pytest.raises(RateLimitError) as info:
        limiter.check("key:a")
    assert info.value.status_code == 429 and info.value.headers() == {"Retry-After": "1"}
    limiter.check("key:b")  # another caller has its own bucket
    clock.advance(0.1)
    limiter.check("key:a")


def test_global_bucket_limits_everyone_and_is_not_spent_by_rejected_requests() -> None:
    clock = FakeClock(0)
    limiter = RateLimiter(rate=1, burst=1, global_rate=1, global_burst=3, clock=clock)
    limiter.check("a")
    with pytest.raises(RateLimitError):
        limiter.check("a")  # a's bucket is empty: the global token must not be taken
    limiter.check("b")
    limiter.check("c")
    with pytest.raises(RateLimitError, match="this router"):
        limiter.check("d")


def test_zero_rate_turns_limits_off() -> None:
    limiter = RateLimiter(rate=0, burst=1, global_rate=0, clock=FakeClock(0))
    for _ in range(1000):
        limiter.check("a")


def test_caller_table_is_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_callers=3, clock=FakeClock(0))
    for caller in "abcdef":
        limiter.check(caller)
    assert len(limiter._buckets) == 3


async def test_app_answers_429_with_retry_after_per_client(router: Any, clock: Any) -> None:
    async with router(rate_limit_rps=1, rate_limit_burst=2) as client:
        codes = [(await client.post("/v1/images/generations", json={"prompt": "x"})).status_code for _ in range(3)]
        limited = await client.post("/v1/images/generations", json={"prompt": "x"})
        clock.advance(1.0)
        after = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert codes == [200, 200, 429]
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200
