"""Token buckets: one per caller (API key fingerprint, or client IP when auth is off) plus one for
the whole router. A request takes one token from both, or from neither; when either is empty the
answer is 429 with a Retry-After of the time until a token is back. The clock is injectable so
tests never sleep.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from kubediffusion.api.errors import RateLimitError


class TokenBucket:
    def __init__(self, rate: float, burst: int, *, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if one is available now)."""
        self.refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class RateLimiter:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        global_rate: float = 0.0,
        global_burst: int = 1,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate, self._burst = rate, burst
        self._clock = clock
        self._max_callers = max_callers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global = TokenBucket(global_rate, global_burst, now=clock()) if global_rate > 0 else None

    def check(self, caller: str) -> None:
        """Take a token for ``caller`` or raise RateLimitError with retry_after."""
        now = self._clock()
        buckets: list[TokenBucket] = []
        if self._rate > 0:
            buckets.append(self._bucket(caller, now))
        if self._global is not None:
            buckets.append(self._global)
        wait = max((b.wait_time(now) for b in buckets), default=0.0)
        if wait > 0:
            scope = "this router" if self._global is not None and self._global.wait_time(now) > 0 else "your key"
            raise RateLimitError(
                f"Rate limit reached for {scope}. Please try again in {wait:.2f}s.",
                retry_after=max(1.0, math.ceil(wait)),
            )
        for bucket in buckets:
            bucket.take()

    def _bucket(self, caller: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self._rate, self._burst, now=now)
            if len(self._buckets) > self._max_callers:
                self._buckets.popitem(last=False)  # bounded memory: forget the least recently seen caller
        else:
            self._buckets.move_to_end(caller)
        return bucket
