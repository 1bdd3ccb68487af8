"""The autoscaler's decision as a table: samples over a window, current replicas, policy, clock -> replicas + reason."""

from __future__ import annotations

import pytest

from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.operator.autoscaler.decision import (
    ABOVE_MAX,
    BELOW_MIN,
    DOWN,
    DOWN_DELAYED,
    IDLE,
    STEADY,
    UP,
    WAKE,
    ZERO,
    Policy,
    Sample,
    decide,
    load_at,
)

POLICY = Policy(min_replicas=1, max_replicas=4, target=2, scale_down_delay=60, idle_before_zero=120)
TO_ZERO = Policy(min_replicas=0, max_replicas=2, target=2, scale_down_delay=60, idle_before_zero=120)
WINDOW = 10.0
NOW = 1000.0


def steady(demand: float, since: float, *, held: int = 0, every: float = 5.0) -> list[Sample]:
    """One sample every ``every`` seconds from ``NOW - since`` to NOW, all with this demand."""
    count = int(since // every)
    return [Sample(NOW - since + i * every, demand, held) for i in range(count + 1)]


def then(before: list[Sample], demand: float, last: float, *, held: int = 0) -> list[Sample]:
    """``before`` with the samples of the last ``last`` seconds replaced by this demand."""
    return [s if s.at < NOW - last else Sample(s.at, demand, held) for s in before]


CASES = [
    # (id, samples, current, policy, replicas, reason)
    ("a held request wakes a model at zero at once", [Sample(NOW, 1, held=1)], 0, TO_ZERO, 1, WAKE),
    ("load at zero wakes it to what the load needs", [Sample(NOW, 8)], 0, POLICY, 4, WAKE),
    ("no demand at zero with min 0 stays at zero", steady(0, 600), 0, TO_ZERO, 0, IDLE),
    ("below minReplicas goes up to the minimum", steady(0, 600), 0, POLICY, 1, BELOW_MIN),
    ("above maxReplicas comes down at once", steady(0, 5), 7, POLICY, 4, ABOVE_MAX),
    ("load over capacity scales up promptly", [Sample(NOW - 5, 0), Sample(NOW, 12)], 1, POLICY, 3, UP),
    ("scale-up stops at maxReplicas", steady(40, 30), 2, POLICY, 4, UP),
    ("load within target keeps the replicas", steady(4, 300), 2, POLICY, 2, STEADY),
    ("load a little over target rounds up", steady(4.5, 300), 2, POLICY, 3, UP),
    ("lower demand for the whole delay scales down", then(steady(8, 300), 2, 90), 4, POLICY, 1, DOWN),
    (
        "lower demand for less than the delay waits",
        then(steady(8, 300), 2, 30),
        4,
        POLICY,
        4,
        DOWN_DELAYED,
    ),
    ("a history shorter than the delay never scales down", steady(0, 30), 3, POLICY, 3, DOWN_DELAYED),
    (
        "down to what the busiest moment of the delay needed",
        then(then(steady(8, 300), 4, 75), 0, 20),
        4,
        POLICY,
        2,
        DOWN,
    ),
    ("min 0: idle for the idle time goes to zero", then(steady(2, 600), 0, 130), 1, TO_ZERO, 0, ZERO),
    (
        "min 0: idle for less than the idle time stays at one",
        then(steady(2, 600), 0, 100),
        1,
        TO_ZERO,
        1,
        STEADY,
    ),
    (
        "min 0: two replicas come down to one before the idle time",
        then(steady(4, 600), 0, 80),
        2,
        TO_ZERO,
        1,
        DOWN,
    ),
    ("min 0: a held request resets the idle time", then(steady(0, 600), 0, 10, held=1), 1, TO_ZERO, 1, STEADY),
    ("min 1 never goes to zero", steady(0, 6000), 1, POLICY, 1, STEADY),
]


@pytest.mark.parametrize(
    ("samples", "current", "policy", "replicas", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_table(samples: list[Sample], current: int, policy: Policy, replicas: int, reason: str) -> None:
    decision = decide(samples, current, policy, now=NOW, window=WINDOW)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message
    assert decision.message


def test_load_is_averaged_over_the_window_only() -> None:
    samples = [Sample(NOW - 30, 100), Sample(NOW - 8, 2), Sample(NOW - 4, 4), Sample(NOW, 6)]
    assert load_at(samples, NOW, WINDOW) == 4.0
    assert load_at(samples, NOW - 30, WINDOW) == 100.0
    assert load_at([], NOW, WINDOW) == 0.0
    # A one-sample spike inside the window is averaged, not followed: 2 replicas, not 6.
    spike = [Sample(NOW - 8, 0), Sample(NOW - 4, 0), Sample(NOW, 12)]
    assert decide(spike, 1, POLICY, now=NOW, window=WINDOW).replicas == 2


def test_samples_after_now_are_not_seen() -> None:
    assert decide([Sample(NOW + 5, 50)], 1, POLICY, now=NOW, window=WINDOW).replicas == 1


def test_the_policy_comes_from_the_spec() -> None:
    spec = ImageModelSpec.from_body(
        {
            "spec": {
                "source": {"tiny": {}},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "scaleDownDelaySeconds": 9},
            }
        }
    )
    policy = Policy.of(spec)
    assert policy == Policy(min_replicas=0, max_replicas=3, target=4, scale_down_delay=9.0, idle_before_zero=600.0)
    assert policy.recommend(0) == 1 and policy.recommend(0.1) == 1 and policy.recommend(9) == 3
    assert Policy.of(ImageModelSpec.from_body({"spec": {"source": {"tiny": {}}}})) is None
