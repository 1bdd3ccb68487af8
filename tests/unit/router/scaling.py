"""Scale from zero in router tests: the API server's side of a wake-up, models at zero, waiting on the app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kubediffusion.router.routing import ModelEntry
from kubediffusion.router.wakeup import WakeError

POD = "http://127.0.9.1:8000"

# A model that scales to zero (autoscaling.minReplicas 0), at zero; woken (spec.replicas 1, no pod ready
# yet); and serving.
ZERO = ModelEntry(name="elastic", namespace="ns", scales_to_zero=True, desired_replicas=0, phase="Pending")
WAKING = replace(ZERO, desired_replicas=1, phase="Loading")
AWAKE = replace(ZERO, desired_replicas=1, phase="Ready", endpoints=(POD,), ready_replicas=1)


class FakeScaler:
    """A model's spec.replicas as the API server keeps it: ``wake`` asks for one replica of a model at 0
    (recorded in ``patches``) and leaves one with replicas alone. ``errors`` are raised first, in order;
    ``gate``, when set, holds every call until it is set."""

    def __init__(self) -> None:
        self.replicas: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[str, str]] = []
        self.patches: list[tuple[str, str]] = []
        self.errors: list[WakeError] = []
        self.gate: asyncio.Event | None = None

    async def wake(self, namespace: str, name: str) -> bool:
        self.calls.append((namespace, name))
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        if self.replicas.get((namespace, name), 0) > 0:
            return False
        self.replicas[(namespace, name)] = 1
        self.patches.append((namespace, name))
        return True


async def until(predicate: Callable[[], bool], within: float = 5.0, message: str = "condition") -> None:
    """Poll ``predicate`` on the event loop until it holds; fail after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.005)


def gauge(app: Any, name: str, model: str = "elastic", namespace: str = "ns") -> float:
    value = app.state.router.metrics.registry.get_sample_value(name, {"model": model, "namespace": namespace})
    return float(value or 0.0)


def held(app: Any, model: ModelEntry = ZERO) -> int:
    count: int = app.state.router.holds.held(model.namespace, model.name)
    return count
