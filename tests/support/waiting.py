"""Polling with a deadline: the only way tests wait for the cluster (never a bare sleep as sync)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not become true before the deadline (an AssertionError, so tests fail)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.5,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Raises :class:`WaitTimeout` after ``timeout`` seconds, naming ``message`` and the last value or
    exception seen. Exceptions raised by ``predicate`` count as "not yet" (they are often transient,
    e.g. a 404 before an object exists) and the last one is shown in the timeout message; an
    ``AssertionError`` or a ``ControlPlaneError`` (a component died) is raised at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except AssertionError:  # a deliberate failure (or a nested WaitTimeout): stop now
            raise
        except Exception as e:
            if type(e).__name__ == "ControlPlaneError":  # a component died: no point waiting
                raise
            last = e
        else:
            if value:
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")
        time.sleep(min(interval, remaining))
