"""Least-requests-in-flight balancing across a model's ready endpoints.

The balancer counts requests this router has in flight per endpoint URL. ``pick`` chooses the
endpoint with the fewest; ties go to the one picked least recently, so idle pods share work evenly.
An endpoint that refused a connection is ejected for a few seconds (passive health checking) and
only chosen again when nothing else is left. Everything runs on the event loop: no locks needed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class _State:
    in_flight: int = 0
    last_pick: int = -1
    ejected_until: float = 0.0


@dataclass
class Lease:
    """One request in flight on ``endpoint``; release exactly once (idempotent)."""

    endpoint: str
    _balancer: Balancer = field(repr=False)
    _on_release: Callable[[], None] | None = field(default=None, repr=False)
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._balancer._done(self.endpoint)
            if self._on_release is not None:
                self._on_release()


class Balancer:
    def __init__(self, *, eject_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._states: dict[str, _State] = {}
        self._counter = itertools.count()
        self._eject_seconds = eject_seconds
        self._clock = clock

    def pick(self, endpoints: Iterable[str], exclude: Iterable[str] = ()) -> str | None:
        """The endpoint to try next, or None when every endpoint is excluded (or there are none)."""
        excluded = set(exclude)
        now = self._clock()
        candidates = [e for e in endpoints if e not in excluded]
        if not candidates:
            return None
        healthy = [e for e in candidates if self._state(e).ejected_until <= now]
        pool = healthy or candidates
        best = min(pool, key=lambda e: (self._state(e).in_flight, self._state(e).last_pick))
        self._state(best).last_pick = next(self._counter)
        return best

    def acquire(self, endpoint: str, on_release: Callable[[], None] | None = None) -> Lease:
        """Count one request on ``endpoint`` until the lease is released; ``on_release`` is called then."""
        self._state(endpoint).in_flight += 1
        return Lease(endpoint, self, on_release)

    def eject(self, endpoint: str) -> None:
        self._state(endpoint).ejected_until = self._clock() + self._eject_seconds

    def in_flight(self, endpoint: str) -> int:
        state = self._states.get(endpoint)
        return state.in_flight if state else 0

    def forget_except(self, endpoints: Iterable[str]) -> None:
        """Drop idle state for endpoints that no longer exist (pods come and go)."""
        keep = set(endpoints)
        for endpoint in [e for e, s in self._states.items() if e not in keep and s.in_flight == 0]:
            del self._states[endpoint]

    def _state(self, endpoint: str) -> _State:
        state = self._states.get(endpoint)
        if state is None:
            state = self._states[endpoint] = _State()
        return state

    def _done(self, endpoint: str) -> None:
        state = self._states.get(endpoint)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1
