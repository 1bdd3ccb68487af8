"""The autoscaler's loop and scrapes: metrics pages in (httpx.MockTransport), /scale writes, status and Events out."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kubediffusion.operator.autoscaler.demand import (
    MAX_BODY,
    RouterDemand,
    Scraper,
    metrics_url,
    pod_demand,
    router_demand,
)
from kubediffusion.operator.autoscaler.loop import Autoscaler
from kubediffusion.operator.kube import KubeError
from kubediffusion.operator.settings import OperatorSettings
from kubediffusion.operator.status import Event

POD_PAGE = """# HELP kubediffusion_inference_queue_depth Images waiting.
# TYPE kubediffusion_inference_queue_depth gauge
kubediffusion_inference_queue_depth {queue}
# TYPE kubediffusion_inference_running_images gauge
kubediffusion_inference_running_images {running}
# TYPE kubediffusion_inference_images_total counter
kubediffusion_inference_images_total 12.0
"""
ROUTER_PAGE = """# TYPE kubediffusion_router_inflight_requests gauge
kubediffusion_router_inflight_requests{{model="m",namespace="ns"}} {inflight}
kubediffusion_router_inflight_requests{{model="other",namespace="ns"}} 50
# TYPE kubediffusion_router_held_requests gauge
kubediffusion_router_held_requests{{model="m",namespace="ns"}} {held}
"""


def test_pod_and_router_pages_parse_into_demand() -> None:
    assert pod_demand(POD_PAGE.format(queue=3, running=2)) == 5
    older = "# TYPE kubediffusion_inference_queue_depth gauge\nkubediffusion_inference_queue_depth 3\n"
    assert pod_demand(older) == 3, "a server without the running gauge counts its queue"
    assert pod_demand("kubediffusion_inference_images_total 3\n") is None
    assert pod_demand("{{{ not metrics") is None
    routers = router_demand(ROUTER_PAGE.format(inflight=2, held=1))
    assert routers[("ns", "m")] == RouterDemand(inflight=2, held=1)
    assert routers[("ns", "other")] == RouterDemand(inflight=50, held=0)
    assert router_demand("garbage {") == {}


def pod(ip: str, *, ready: bool = True, model: str = "m", port: int | None = 8000) -> dict[str, Any]:
    ports = [{"name": "http", "containerPort": port}] if port else []
    return {
        "metadata": {"name": f"p-{ip}", "namespace": "ns", "labels": {"kubediffusion.io/model": model}},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_only_ready_pods_with_an_address_are_scraped_on_their_http_port() -> None:
    assert metrics_url(pod("10.0.0.1"), 8000) == "http://10.0.0.1:8000/metrics"
    assert metrics_url(pod("10.0.0.1", port=9000), 8000) == "http://10.0.0.1:9000/metrics"
    assert metrics_url(pod("10.0.0.1", port=None), 8080) == "http://10.0.0.1:8080/metrics"
    assert metrics_url(pod("fd00::1"), 8000) == "http://[fd00::1]:8000/metrics"
    assert metrics_url(pod("10.0.0.1", ready=False), 8000) is None
    terminating = pod("10.0.0.1")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert metrics_url(terminating, 8000) is None


class FakeKube:
    def __init__(self, model: dict[str, Any], pods: list[dict[str, Any]], routers: list[dict[str, Any]]) -> None:
        self.model, self.pods, self.routers = model, pods, routers
        self.scales: list[tuple[str, int, str]] = []
        self.statuses: list[dict[str, Any] | None] = []
        self.refuse: KubeError | None = None
        self.events: list[Event] = []

    def post_event(self, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        assert about["metadata"]["name"] == "m"
        self.events.append(Event(type_, reason, message))

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        if kind == "ImageModel":
            return [copy.deepcopy(self.model)]
        if selector.get("app.kubernetes.io/component") == "router":
            return self.routers
        return self.pods

    def scale(self, namespace: str, name: str, replicas: int, *, resource_version: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.scales.append((name, replicas, resource_version))
        self.model["spec"]["replicas"] = replicas
        self.model["metadata"]["resourceVersion"] = str(int(resource_version) + 1)

    def apply_autoscaling_status(self, namespace: str, name: str, autoscaling: dict[str, Any] | None) -> None:
        self.statuses.append(autoscaling)
        self.model.setdefault("status", {})["autoscaling"] = autoscaling


def model(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "m", "namespace": "ns", "uid": "u", "resourceVersion": "7"}
    return {"apiVersion": "kubediffusion.io/v1alpha1", "kind": "ImageModel", "metadata": meta, "spec": spec}


SETTINGS = OperatorSettings(
    namespace="ns",
    autoscale_interval_seconds=5,
    autoscale_window_seconds=5,
    router_namespace="kd",
    router_selector="app.kubernetes.io/component=router",
)
ROUTER_POD = {**pod("10.9.0.1", port=8080), "metadata": {"name": "router", "namespace": "kd"}}


class Harness:
    def __init__(self, kube: FakeKube, pages: dict[str, Callable[[], httpx.Response]]) -> None:
        self.kube, self.pages, self.now = kube, pages, 1000.0
        self.events = kube.events

        async def answer(request: httpx.Request) -> httpx.Response:
            return self.pages[str(request.url)]()

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        scraper = Scraper(self.client, timeout=0.5, concurrency=2)
        self.autoscaler = Autoscaler(
            kube,  # type: ignore[arg-type]
            SETTINGS,
            scraper,
            clock=lambda: self.now,
            wall=lambda: "2026-01-01T00:00:00Z",
        )

    async def tick(self, advance: float = 5.0) -> None:
        self.now += advance
        await self.autoscaler.tick()


def page(text: str) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, text=text)


ROUTER_URL = "http://10.9.0.1:8080/metrics"


async def test_a_held_request_wakes_a_model_at_zero_through_scale_with_an_event_and_status() -> None:
    kube = FakeKube(model({"source": {"tiny": {}}, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}), [],
                    [ROUTER_POD])  # fmt: skip
    harness = Harness(kube, {ROUTER_URL: page(ROUTER_PAGE.format(inflight=0, held=0))})
    await harness.tick()
    assert kube.scales == [("m", 0, "7")], "spec.replicas is written once so that /scale reads the truth"
    assert harness.events == [], "not a change"
    assert kube.statuses[-1] is not None and kube.statuses[-1]["reason"] == "Idle"

    harness.pages[ROUTER_URL] = page(ROUTER_PAGE.format(inflight=0, held=1))
    await harness.tick()
    assert kube.scales[-1] == ("m", 1, "8"), "the resourceVersion it decided on"
    [event] = harness.events
    assert (event.type, event.reason) == ("Normal", "WakeFromZero") and "0 -> 1" in event.message
    status = kube.statuses[-1]
    assert status is not None
    assert status["desiredReplicas"] == 1 and status["reason"] == "WakeFromZero"
    assert status["lastScaleTime"] == "2026-01-01T00:00:00Z" and status["load"] == 1.0
    await harness.client.aclose()


async def test_pod_queues_scale_up_and_demand_is_not_counted_twice() -> None:
    spec = {"source": {"tiny": {}}, "replicas": 1,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetImagesPerReplica": 2}}  # fmt: skip
    kube = FakeKube(model(spec), [pod("10.0.0.1"), pod("10.0.0.2"), pod("10.0.0.3", ready=False)], [ROUTER_POD])
    pages = {
        "http://10.0.0.1:8000/metrics": page(POD_PAGE.format(queue=2, running=2)),
        "http://10.0.0.2:8000/metrics": page(POD_PAGE.format(queue=0, running=1)),
        ROUTER_URL: page(ROUTER_PAGE.format(inflight=4, held=0)),
    }
    harness = Harness(kube, pages)
    kube.model["spec"]["replicas"] = 1
    await harness.tick()
    # max(pods 5, router in flight 4) + held 0 = 5 images over target 2: 3 replicas (not 9/2 -> 5).
    assert kube.scales == [("m", 3, "7")]
    assert [e.reason for e in harness.events] == ["ScaleUp"]
    await harness.client.aclose()


async def test_pods_that_fail_to_answer_count_as_nothing_and_never_stall_the_pass() -> None:
    spec = {"source": {"tiny": {}}, "replicas": 2, "autoscaling": {"maxReplicas": 4, "targetImagesPerReplica": 1}}

    def refused() -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def slow() -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    pages = {
        "http://10.0.0.1:8000/metrics": refused,
        "http://10.0.0.2:8000/metrics": slow,
        "http://10.0.0.3:8000/metrics": page("x" * (MAX_BODY + 10)),
        "http://10.0.0.4:8000/metrics": lambda: httpx.Response(500, text=POD_PAGE.format(queue=9, running=9)),
        "http://10.0.0.5:8000/metrics": page(POD_PAGE.format(queue=3, running=0)),
    }
    kube = FakeKube(model(spec), [pod(f"10.0.0.{i}") for i in range(1, 6)], [])
    harness = Harness(kube, pages)
    await asyncio.wait_for(harness.tick(), timeout=5)
    assert kube.scales == [("m", 3, "7")], "only the page that parsed counts"
    await harness.client.aclose()


async def test_a_conflicting_write_is_not_retried_blindly_and_posts_nothing() -> None:
    spec = {"source": {"tiny": {}}, "replicas": 0, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    kube = FakeKube(model(spec), [], [ROUTER_POD])
    kube.refuse = KubeError(409, "the object has been modified")
    harness = Harness(kube, {ROUTER_URL: page(ROUTER_PAGE.format(inflight=0, held=3))})
    await harness.tick()
    assert kube.scales == [] and harness.events == [] and kube.statuses == []
    kube.refuse = KubeError(503, "etcd leader changed")
    with pytest.raises(KubeError):
        await harness.tick()


async def test_turning_autoscaling_off_removes_its_status_and_history() -> None:
    kube = FakeKube(model({"source": {"tiny": {}}, "replicas": 1, "autoscaling": {"maxReplicas": 2}}), [], [])
    harness = Harness(kube, {})
    await harness.tick()
    assert kube.statuses[-1] is not None and ("ns", "m") in harness.autoscaler.memory
    del kube.model["spec"]["autoscaling"]
    await harness.tick()
    assert kube.statuses[-1] is None, "status.autoscaling removed (its field manager applies nothing)"
    assert kube.scales == [] and ("ns", "m") not in harness.autoscaler.memory
    kube.model["status"]["autoscaling"] = None
    await harness.tick()
    assert len(kube.statuses) == 2, "removed once"
    await harness.client.aclose()


async def test_scale_down_waits_for_the_delay_and_status_is_refreshed_not_rewritten_each_pass() -> None:
    spec = {"source": {"tiny": {}}, "replicas": 2,
            "autoscaling": {"maxReplicas": 2, "targetImagesPerReplica": 1, "scaleDownDelaySeconds": 20}}  # fmt: skip
    kube = FakeKube(model(spec), [pod("10.0.0.1")], [])
    busy = {"http://10.0.0.1:8000/metrics": page(POD_PAGE.format(queue=1, running=1))}
    harness = Harness(kube, busy)
    await harness.tick()
    assert kube.scales == [] and len(kube.statuses) == 1
    harness.pages["http://10.0.0.1:8000/metrics"] = page(POD_PAGE.format(queue=0, running=1))
    for _ in range(4):  # 20 s of samples, the oldest still busy
        await harness.tick()
    assert kube.scales == [], "not before scaleDownDelaySeconds of lower demand"
    assert len(kube.statuses) == 2, "a new reason is written at once, an unchanged one is not rewritten"
    await harness.tick()
    await harness.tick()
    assert kube.scales == [("m", 1, "7")] and [e.reason for e in harness.events] == ["ScaleDown"]
    await harness.client.aclose()
