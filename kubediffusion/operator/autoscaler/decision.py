"""The autoscaler's decision: demand samples in, desired replicas and the reason out.

Pure: no API, no clock (``now`` is passed in), so every rule is a row of a table test.

A :class:`Sample` is one model's demand at one moment: the images queued and running in its pods, or
the requests in flight at the routers, whichever is larger (a request a router forwarded is also queued
or running at a pod: adding both would count it twice), plus the requests the routers hold for it
(held requests are nowhere else yet). ``load`` is that demand averaged over the window.

The rules, first match wins:

1. wake: at 0 replicas, any demand (a request held at a router) asks for at least one pod at once;
2. idle at zero: at 0 with ``minReplicas`` 0 and no demand, stay there;
3. bounds: below ``minReplicas`` or above ``maxReplicas``, the bound at once;
4. up: ``ceil(load / target)`` above the current replicas, that many (at most max) at once;
5. zero: ``minReplicas`` 0 and not one sample with demand for ``idleSecondsBeforeZero``: 0;
6. down: the highest recommendation of the last ``scaleDownDelaySeconds`` below the current replicas:
   that many (never below ``max(minReplicas, 1)``; going to zero is rule 5's). Rules 5 and 6 act
   only once the samples cover their whole span: after an operator restart the history starts over,
   and a model is not scaled down on the word of a few seconds;
7. otherwise keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubediffusion.imagemodel.spec import ImageModelSpec

# Decision reasons: status.autoscaling.reason and the Event's reason when the replicas change.
WAKE = "WakeFromZero"
IDLE = "Idle"
BELOW_MIN = "BelowMinReplicas"
ABOVE_MAX = "AboveMaxReplicas"
UP = "ScaleUp"
ZERO = "ScaleToZero"
DOWN = "ScaleDown"
DOWN_DELAYED = "ScaleDownDelayed"
STEADY = "WithinTarget"


@dataclass(frozen=True)
class Sample:
    at: float  # seconds on a monotonic clock
    demand: float  # images queued + running (or requests in flight), plus requests held
    held: int = 0  # requests the routers hold for this model (it has no ready pod)


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target: int  # images per replica
    scale_down_delay: float
    idle_before_zero: float

    @classmethod
    def of(cls, spec: ImageModelSpec) -> Policy | None:
        auto = spec.autoscaling
        if auto is None:
            return None
        return cls(
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            target=spec.target_images_per_replica,
            scale_down_delay=float(auto.scale_down_delay_seconds),
            idle_before_zero=float(auto.idle_seconds_before_zero),
        )

    def recommend(self, load: float) -> int:
        """Replicas for ``load`` within ``max(min, 1)..max`` (zero is a decision of its own)."""
        wanted = math.ceil(round(load / self.target, 6))
        return max(max(self.min_replicas, 1), min(self.max_replicas, wanted))


@dataclass(frozen=True)
class Decision:
    replicas: int
    load: float
    reason: str
    message: str


def load_at(samples: Sequence[Sample], at: float, window: float) -> float:
    """Mean demand of the samples in ``(at - window, at]`` (0 without any)."""
    inside = [s.demand for s in samples if at - window < s.at <= at]
    return sum(inside) / len(inside) if inside else 0.0


def _covers(samples: Sequence[Sample], now: float, span: float) -> bool:
    return bool(samples) and samples[0].at <= now - span


def decide(samples: Sequence[Sample], current: int, policy: Policy, *, now: float, window: float) -> Decision:
    """Desired replicas for a model at ``current`` replicas; ``samples`` oldest first."""
    seen = [s for s in samples if s.at <= now]
    load = load_at(seen, now, window)
    held = seen[-1].held if seen else 0
    wanted = policy.recommend(load)

    def keep(reason: str, message: str) -> Decision:
        return Decision(current, load, reason, message)

    if current == 0 and (held > 0 or load > 0):
        why = f"{held} request(s) held at the routers" if held else f"load {load:.1f} at zero replicas"
        return Decision(max(1, wanted), load, WAKE, why)
    if current == 0 and policy.min_replicas == 0:
        return keep(IDLE, "no demand: scaled to zero until a request arrives")
    if current < policy.min_replicas:
        return Decision(policy.min_replicas, load, BELOW_MIN, f"{current} is below minReplicas")
    if current > policy.max_replicas:
        return Decision(policy.max_replicas, load, ABOVE_MAX, f"{current} is above maxReplicas")
    capacity = f"load {load:.1f} for {current} replica(s) of target {policy.target}"
    if wanted > current:
        return Decision(wanted, load, UP, f"{capacity}: {wanted} needed")
    idle_span = policy.idle_before_zero
    if policy.min_replicas == 0 and _covers(seen, now, idle_span):
        quiet = all(s.demand == 0 and s.held == 0 for s in seen if s.at >= now - idle_span)
        if quiet:
            return Decision(0, load, ZERO, f"no demand for {idle_span:.0f}s")
    if wanted < current:
        delay = policy.scale_down_delay
        if not _covers(seen, now, delay):
            return keep(DOWN_DELAYED, f"{capacity}: {wanted} would do; waiting for {delay:.0f}s of lower demand")
        stable = max(policy.recommend(load_at(seen, s.at, window)) for s in seen if s.at >= now - delay)
        if stable < current:
            return Decision(stable, load, DOWN, f"{capacity}: {stable} enough for the last {delay:.0f}s")
        return keep(DOWN_DELAYED, f"{capacity}: demand needed {stable} within the last {delay:.0f}s")
    return keep(STEADY, capacity)
