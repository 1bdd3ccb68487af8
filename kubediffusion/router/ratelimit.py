"""Token buckets: one per caller (a tenant of the tenants file, else an API key fingerprint, or the client
IP when auth is off) plus one for the whole router. A tenant may have its own rate and burst; the others
get the router's per-key default. A request takes one token from both, or from neither; when either is empty the
answer is 429 with a Retry-After of the time until a token is back. The clock is injectable so
tests never sleep.

:class:`FailureThrottle` keeps a second kind of bucket per client address, spent only by failed
authentications (brute force): once an address has spent its burst, its requests are refused with a
429 before any key is compared, until a token is back. A request with a right key spends nothing.
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


class BucketTable:
    """Buckets by caller, at most ``max_callers`` of them: the least recently seen is forgotten first."""

    def __init__(self, rate: float, burst: int, max_callers: int) -> None:
        self.rate, self.burst, self.max_callers = rate, burst, max_callers
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, caller: str, now: float, rate: float | None = None, burst: int | None = None) -> TokenBucket:
        """``caller``'s bucket; ``rate`` and ``burst`` (default: the table's) change an existing one's
        (a tenant's limit edited in the tenants file), its tokens capped at the new burst."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        bucket = self.buckets.get(caller)
        if bucket is None:
            bucket = self.buckets[caller] = TokenBucket(rate, burst, now=now)
            if len(self.buckets) > self.max_callers:
                self.buckets.popitem(last=False)  # bounded memory
        else:
            self.buckets.move_to_end(caller)
            if (bucket.rate, bucket.burst) != (rate, burst):
                bucket.refill(now)
                bucket.rate, bucket.burst = rate, burst
                bucket.tokens = min(bucket.tokens, float(burst))
        return bucket


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
        self._rate = rate
        self._clock = clock
        self._table = BucketTable(rate, burst, max_callers)
        self._buckets = self._table.buckets
        self._global = TokenBucket(global_rate, global_burst, now=clock()) if global_rate > 0 else None

    def check(self, caller: str, *, rate: float | None = None, burst: int | None = None, who: str = "your key") -> None:
        """Take a token for ``caller`` (its own ``rate`` and ``burst``, else the default; rate 0: no limit
        of its own) or raise RateLimitError with retry_after."""
        now = self._clock()
        buckets: list[TokenBucket] = []
        if (self._rate if rate is None else rate) > 0:
            buckets.append(self._table.get(caller, now, rate, burst))
        if self._global is not None:
            buckets.append(self._global)
        wait = max((b.wait_time(now) for b in buckets), default=0.0)
        if wait > 0:
            scope = "this router" if self._global is not None and self._global.wait_time(now) > 0 else who
            raise RateLimitError(
                f"Rate limit reached for {scope}. Please try again in {wait:.2f}s.",
                retry_after=max(1.0, math.ceil(wait)),
            )
        for bucket in buckets:
            bucket.take()


class FailureThrottle:
    """Failed authentications per client address: ``burst`` of them, then one more per ``1 / rate`` s.

    :meth:`check` comes before the key is looked at, :meth:`failed` after a wrong one. ``rate`` 0 = off.
    Authentication is synchronous between the two calls, so concurrent requests cannot both pass
    :meth:`check` on the last token.
    """

    def __init__(
        self, *, rate: float, burst: int, max_addresses: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._table = BucketTable(rate, burst, max_addresses)

    @property
    def enabled(self) -> bool:
        return self._table.rate > 0

    def check(self, address: str) -> None:
        """RateLimitError when ``address`` has no failed attempt left; its key is then never compared."""
        bucket = self._table.buckets.get(address)
        if not self.enabled or bucket is None:
            return
        wait = bucket.wait_time(self._clock())
        if wait > 0:
            raise RateLimitError(
                f"Too many failed authentication attempts from your address. Please try again in {math.ceil(wait)}s.",
                code="too_many_failed_authentications",
                retry_after=max(1.0, math.ceil(wait)),
            )

    def failed(self, address: str) -> bool:
        """Count a failed attempt; True when it was the last one ``address`` had."""
        if not self.enabled:
            return False
        now = self._clock()
        bucket = self._table.get(address, now)
        bucket.refill(now)
        bucket.take()
        return bucket.tokens < 1
