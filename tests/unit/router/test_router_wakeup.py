"""Waking a model at zero: one wake-up at a time per model, retried with backoff while the error may pass,
given up when it cannot; and the scale subresource write itself (a fake lightkube client records it; the
real API server's answers are in tests/cluster/test_router_wake.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.autoscaling_v1 import Scale, ScaleSpec
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.types import PatchType

from kubediffusion.router.kube_discovery import ImageModel
from kubediffusion.router.kube_scaler import KubeScaler
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.routing import RoutingTable
from kubediffusion.router.wakeup import WAKE_BACKOFF_SECONDS, WakeError, Waker
from tests.unit.router.conftest import FakeClock
from tests.unit.router.scaling import AWAKE, WAKING, ZERO, FakeScaler, until


class Setup:
    def __init__(self) -> None:
        self.scaler = FakeScaler()
        self.table = RoutingTable([ZERO])
        self.metrics = RouterMetrics()
        self.clock = FakeClock()
        self.sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.waker = Waker(self.scaler, table=lambda: self.table, metrics=self.metrics, sleep=sleep, clock=self.clock)

    def outcomes(self) -> dict[str, float]:
        registry = self.metrics.registry
        labels = {"model": "elastic", "namespace": "ns"}
        return {
            outcome: registry.get_sample_value("kubediffusion_router_wakeups_total", {**labels, "outcome": outcome})
            or 0.0
            for outcome in ("scaled", "awake", "failed")
        }

    async def settled(self) -> None:
        await until(lambda: not self.waker._tasks, message="wake-up finished")


@pytest.fixture
def setup() -> Setup:
    return Setup()


async def test_errors_that_may_pass_are_retried_with_backoff(setup: Setup) -> None:
    setup.scaler.errors = [WakeError("409 Conflict", retryable=True), WakeError("503", retryable=True)]
    setup.waker.wake(ZERO)
    await setup.settled()
    assert setup.scaler.patches == [("ns", "elastic")] and len(setup.scaler.calls) == 3
    assert setup.sleeps == list(WAKE_BACKOFF_SECONDS[:2])
    assert setup.outcomes() == {"scaled": 1, "awake": 0, "failed": 0}


async def test_a_wake_up_gives_up_after_its_attempts_and_the_next_request_tries_again(setup: Setup) -> None:
    setup.scaler.errors = [WakeError("503", retryable=True) for _ in range(len(WAKE_BACKOFF_SECONDS) + 1)]
    setup.waker.wake(ZERO)
    await setup.settled()
    assert setup.scaler.patches == [] and setup.sleeps == list(WAKE_BACKOFF_SECONDS)
    assert setup.outcomes()["failed"] == 1
    setup.waker.wake(ZERO)
    await setup.settled()
    assert setup.scaler.patches == [("ns", "elastic")]


async def test_an_error_that_cannot_pass_is_not_retried(setup: Setup) -> None:
    setup.scaler.errors = [WakeError("403 Forbidden", retryable=False)]
    setup.waker.wake(ZERO)
    await setup.settled()
    assert len(setup.scaler.calls) == 1 and setup.sleeps == [] and setup.outcomes()["failed"] == 1


async def test_one_wake_up_at_a_time_and_none_again_until_discovery_shows_the_replicas(setup: Setup) -> None:
    setup.scaler.gate = asyncio.Event()
    for _ in range(3):
        setup.waker.wake(ZERO)
    await until(lambda: len(setup.scaler.calls) == 1, message="one call")
    setup.scaler.gate.set()
    await setup.settled()
    setup.waker.wake(ZERO)  # the table still says zero: remembered, no second call
    assert len(setup.scaler.calls) == 1
    setup.clock.advance(31)  # remembered only so long (a view that never catches up must not block wake-ups)
    setup.waker.wake(ZERO)
    await setup.settled()
    assert len(setup.scaler.calls) == 2 and setup.scaler.patches == [("ns", "elastic")]  # 2nd: already awake
    assert setup.outcomes() == {"scaled": 1, "awake": 1, "failed": 0}


async def test_a_model_seen_with_replicas_may_be_woken_again_once_back_at_zero(setup: Setup) -> None:
    setup.waker.wake(ZERO)
    await setup.settled()
    setup.waker.table_changed(RoutingTable([AWAKE]))
    setup.scaler.replicas.clear()
    setup.waker.table_changed(RoutingTable([ZERO]))
    setup.waker.wake(ZERO)
    await setup.settled()
    assert setup.scaler.patches == [("ns", "elastic")] * 2


async def test_a_model_not_known_to_be_at_zero_is_never_woken(setup: Setup) -> None:
    for entry in (WAKING, AWAKE, replace(ZERO, desired_replicas=None)):
        setup.waker.wake(entry)
    assert setup.scaler.calls == [] and not setup.waker._tasks


async def test_close_cancels_a_wake_up_under_way(setup: Setup) -> None:
    setup.scaler.gate = asyncio.Event()
    setup.waker.wake(ZERO)
    await until(lambda: len(setup.scaler.calls) == 1, message="called")
    await asyncio.wait_for(setup.waker.close(), 5)
    assert setup.scaler.patches == [] and not setup.waker._tasks


# -- KubeScaler: the write ---------------------------------------------------------------------------


def api_error(code: int, message: str = "") -> ApiError:
    return ApiError(status=Status(code=code, message=message or f"HTTP {code}"))


class FakeLightkube:
    """lightkube's AsyncClient as KubeScaler uses it: ``get`` and ``patch`` of ImageModel.Scale."""

    def __init__(self, replicas: int | None, version: str = "41") -> None:
        self.replicas, self.version = replicas, version
        self.patches: list[tuple[Any, str, dict[str, Any], str | None, PatchType]] = []
        self.patch_error: Exception | None = None

    async def get(self, res: Any, name: str, *, namespace: str | None = None) -> Scale:
        assert res is ImageModel.Scale
        if self.replicas is None:
            raise api_error(500, 'Internal error occurred: the spec replicas field ".spec.replicas" does not exist')
        return Scale(metadata=ObjectMeta(name=name, resourceVersion=self.version), spec=ScaleSpec(self.replicas))

    async def patch(self, res: Any, name: str, obj: Any, *, namespace: str | None = None, patch_type: Any) -> Scale:
        self.patches.append((res, name, obj, namespace, patch_type))
        if self.patch_error is not None:
            raise self.patch_error
        return Scale(spec=ScaleSpec(1))


async def test_a_model_at_zero_gets_one_replica_written_at_the_version_read() -> None:
    client = FakeLightkube(replicas=0)
    assert await KubeScaler(client).wake("ns", "elastic") is True  # type: ignore[arg-type]
    body = {"metadata": {"resourceVersion": "41"}, "spec": {"replicas": 1}}
    assert client.patches == [(ImageModel.Scale, "elastic", body, "ns", PatchType.MERGE)]


async def test_a_model_with_replicas_is_left_alone() -> None:
    client = FakeLightkube(replicas=2)
    assert await KubeScaler(client).wake("ns", "elastic") is False  # type: ignore[arg-type]
    assert client.patches == []


async def test_a_model_without_spec_replicas_is_patched_without_a_precondition() -> None:
    client = FakeLightkube(replicas=None)
    assert await KubeScaler(client).wake("ns", "elastic") is True  # type: ignore[arg-type]
    assert [patch[2] for patch in client.patches] == [{"spec": {"replicas": 1}}]


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (api_error(409), True),  # changed since read: read again
        (api_error(429), True),
        (api_error(503), True),
        (httpx.ConnectError("refused"), True),
        (httpx2.ConnectError("refused"), True),  # what lightkube's transport really raises
        (httpx2.ReadTimeout("slow"), True),
        (api_error(403), False),  # no RBAC for imagemodels/scale
        (api_error(404), False),  # the model is gone
        (api_error(422), False),  # the CRD refuses the write
    ],
)
async def test_errors_say_whether_to_try_again(error: Exception, retryable: bool) -> None:
    client = FakeLightkube(replicas=0)
    client.patch_error = error
    with pytest.raises(WakeError) as caught:
        await KubeScaler(client).wake("ns", "elastic")  # type: ignore[arg-type]
    assert caught.value.retryable is retryable
