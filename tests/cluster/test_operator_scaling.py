"""Elastic replicas against a real API server: /scale writes reach the Deployment and stay, and the built-in
autoscaler follows demand that a router reports (a stub router on a loopback address, found by its Pod)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import (
    OperatorProcess,
    create_model,
    get_model,
    list_objects,
    raw,
    wait_phase,
)
from tests.support.fixtures import Cluster
from tests.support.metrics_stub import MetricsStub, router_page
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

TINY: dict[str, Any] = {"source": {"tiny": {}}, "resources": {"gpus": 0}, "cache": {"size": "1Gi"}}
ROUTER_LABELS = {"app.kubernetes.io/component": "router", "kubediffusion.io/test-router": "true"}


def scale(api: client.ApiClient, ns: str, name: str, replicas: int) -> None:
    """`kubectl scale im/NAME --replicas=N`: a merge patch of the scale subresource."""
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{ns}/imagemodels/{name}/scale"
    code, answer = raw(
        api, "PATCH", path, {"spec": {"replicas": replicas}}, content_type="application/merge-patch+json"
    )
    assert code == 200, answer


def deployment(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    code, answer = raw(api, "GET", f"/apis/apps/v1/namespaces/{ns}/deployments/im-{name}")
    assert code == 200, answer
    result: dict[str, Any] = answer
    return result


def model_events(api: client.ApiClient, ns: str, name: str) -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["reason"], e.get("message") or "")
        for e in list_objects(api, f"/api/v1/namespaces/{ns}/events")
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "ImageModel"
    ]


def test_a_scale_write_reaches_the_deployment_and_no_resync_undoes_it(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "scaled", {**TINY, "replicas": 1})
    model = wait_phase(api_client, namespace, "scaled", "Ready")
    assert model["status"]["selector"] == "kubediffusion.io/model=scaled,app.kubernetes.io/component=inference"
    scale(api_client, namespace, "scaled", 2)
    wait_for(
        lambda: (
            deployment(api_client, namespace, "scaled")["spec"]["replicas"] == 2
            and (get_model(api_client, namespace, "scaled") or {}).get("status", {}).get("ready") == "2/2"
        ),
        timeout=60,
        interval=0.3,
        message="2 replicas after the /scale write",
    )
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/scaled/scale"
    code, answer = raw(api_client, "GET", path)
    assert code == 200 and answer["spec"]["replicas"] == 2 and answer["status"]["replicas"] == 2, answer
    assert answer["status"]["selector"] == model["status"]["selector"]

    # Someone else's edit of the Deployment is drift: the next reconcile takes it back to 2 (the /scale
    # value), not to the 1 the manifest once said. That reconcile is the proof that resyncs keep it.
    code, answer = raw(
        api_client,
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/im-scaled",
        {"spec": {"replicas": 5}},
        content_type="application/merge-patch+json",
        fieldManager="someone-else",
    )
    assert code == 200, answer
    wait_for(
        lambda: deployment(api_client, namespace, "scaled")["spec"]["replicas"] == 2,
        timeout=40,
        interval=0.3,
        message="drift corrected back to the scaled replicas",
    )
    assert (get_model(api_client, namespace, "scaled") or {})["spec"]["replicas"] == 2


@pytest.fixture
def router_stub(api_client: client.ApiClient, namespace: str) -> Iterator[MetricsStub]:
    """A router replica as the operator finds one: a ready Pod (kwok leaves its status to us) whose podIP
    is a loopback address where this process serves the router's gauges."""
    stub = MetricsStub(host=f"127.77.{random.randint(0, 255)}.{random.randint(1, 254)}").start()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "router-0", "labels": ROUTER_LABELS, "annotations": {"kwok.x-k8s.io/status": "custom"}},
        "spec": {
            "nodeName": "cpu-node-0",
            "containers": [
                {"name": "router", "image": "router:test", "ports": [{"name": "http", "containerPort": stub.port}]}
            ],
        },
    }  # fmt: skip
    code, answer = raw(api_client, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert code == 201, answer
    status = {"phase": "Running", "podIP": stub.host, "podIPs": [{"ip": stub.host}],
              "conditions": [{"type": "Ready", "status": "True"}]}  # fmt: skip
    code, answer = raw(
        api_client,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/router-0/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def autoscaling_operator(
    control_plane: Cluster, imagemodel_crd: str, cache_storage: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    env = {
        "KD_OPERATOR_NAMESPACE": namespace,
        "KD_OPERATOR_AUTOSCALE_INTERVAL_SECONDS": "1",
        "KD_OPERATOR_AUTOSCALE_WINDOW_SECONDS": "2",
        "KD_OPERATOR_ROUTER_NAMESPACE": namespace,
        "KD_OPERATOR_ROUTER_SELECTOR": ",".join(f"{k}={v}" for k, v in ROUTER_LABELS.items()),
    }
    proc = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_the_autoscaler_follows_router_demand_up_down_to_zero_and_back(
    api_client: client.ApiClient, namespace: str, router_stub: MetricsStub, autoscaling_operator: OperatorProcess
) -> None:
    auto = {"minReplicas": 0, "maxReplicas": 3, "targetImagesPerReplica": 2,
            "scaleDownDelaySeconds": 4, "idleSecondsBeforeZero": 12}  # fmt: skip
    router_stub.text = router_page(namespace, {"auto": (0, 0)})
    create_model(api_client, namespace, "auto", {**TINY, "autoscaling": auto})

    def at(replicas: int, reason: str) -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "auto") or {}
        decided = (model.get("status") or {}).get("autoscaling") or {}
        dep = deployment(api_client, namespace, "auto") if model.get("status") else {}
        settled = model["spec"].get("replicas") == replicas and dep.get("spec", {}).get("replicas") == replicas
        return model if settled and decided.get("reason") == reason else None

    def wait(replicas: int, reason: str, timeout: float = 60) -> dict[str, Any]:
        message = f"{replicas} replica(s), {reason}\n{autoscaling_operator.tail(20)}"
        result: dict[str, Any] = wait_for(lambda: at(replicas, reason), timeout=timeout, interval=0.3, message=message)
        return result

    # min 0 and nothing asked for: the model starts at zero (the cache still fills) and says why.
    model = wait(0, "Idle")
    assert model["status"]["autoscaling"]["desiredReplicas"] == 0
    wait_phase(api_client, namespace, "auto", "Pending", Ready="ScaledToZero")
    # A request held at a router wakes it at once.
    router_stub.text = router_page(namespace, {"auto": (0, 1)})
    model = wait(1, "WakeFromZero", timeout=30)
    assert model["status"]["autoscaling"]["lastScaleTime"]
    wait_phase(api_client, namespace, "auto", "Ready")
    # Six requests in flight at target 2 per replica: three replicas, at most maxReplicas.
    router_stub.text = router_page(namespace, {"auto": (6, 0), "other": (40, 40)})
    model = wait(3, "ScaleUp", timeout=30)
    assert model["status"]["autoscaling"]["load"] >= 4
    # Traffic stops: down to one after the 4 s delay, to zero after 12 s without any demand.
    router_stub.text = router_page(namespace, {"auto": (0, 0)})
    wait(1, "ScaleDown", timeout=30)
    wait(0, "ScaleToZero", timeout=30)
    reasons = [reason for kind, reason, _ in model_events(api_client, namespace, "auto") if kind == "Normal"]
    for reason in ("WakeFromZero", "ScaleUp", "ScaleDown", "ScaleToZero"):
        assert reason in reasons, reasons
    messages = [m for _, reason, m in model_events(api_client, namespace, "auto") if reason == "ScaleUp"]
    assert any("1 -> " in m for m in messages), messages


def test_a_read_write_once_cache_keeps_every_replica_on_one_node_and_says_so(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # Three CPU-only pods could go to any of the fake nodes; a ReadWriteOnce claim attaches to one of them.
    create_model(api_client, namespace, "pinned", {**TINY, "replicas": 3})
    model = wait_phase(api_client, namespace, "pinned", "Ready", CacheReady="CacheNotShareable")
    assert "3 pods are kept on the node" in next(
        c["message"] for c in model["status"]["conditions"] if c["type"] == "CacheReady"
    )
    pods = list_objects(
        api_client,
        f"/api/v1/namespaces/{namespace}/pods",
        "kubediffusion.io/model=pinned,app.kubernetes.io/component=inference",
    )
    assert len(pods) == 3 and len({p["spec"]["nodeName"] for p in pods}) == 1, [p["spec"]["nodeName"] for p in pods]
