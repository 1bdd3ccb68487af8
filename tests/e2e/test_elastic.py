"""Elastic serving end to end: the built-in autoscaler wakes a model at zero when a router holds a request for it,
and follows the real queues of its pods up to maxReplicas and back down after the delay.

The router replica the operator reads is a stand-in pod (tests/support/metrics_stub.py run by the pod
runner) whose gauges the test writes; the model pods, their queues and the e2e router that carries the
traffic are real. Tests run in file order on one model.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import get_model, list_objects, wait_phase
from tests.e2e.conftest import ROUTER_POD_LABELS
from tests.e2e.runner_node import NODE_NAME
from tests.e2e.stack import REPO_ROOT, E2EStack, decode_image
from tests.support.metrics_stub import router_page
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "elastic"
AUTOSCALING = {"minReplicas": 0, "maxReplicas": 2, "targetImagesPerReplica": 2,
               "scaleDownDelaySeconds": 6, "idleSecondsBeforeZero": 600}  # fmt: skip


@pytest.fixture(scope="module")
def router_gauges(e2e_stack: E2EStack) -> Iterator[Path]:
    """A "router replica" pod on the runner's node serving the gauges this file holds."""
    gauges = e2e_stack.workdir / "router-gauges.txt"
    gauges.write_text(router_page(e2e_stack.namespace, {MODEL: (0, 0)}))
    command = [
        sys.executable,
        str(REPO_ROOT / "tests/support/metrics_stub.py"),
        "--host",
        "0.0.0.0",
        "--file",
        str(gauges),
    ]
    pod = {
        "metadata": {"name": "router-stand-in", "labels": ROUTER_POD_LABELS},
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [{"name": "router", "image": "router:e2e", "command": command,
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }  # fmt: skip
    core = client.CoreV1Api(e2e_stack.api)
    core.create_namespaced_pod(e2e_stack.namespace, pod)
    try:
        yield gauges
    finally:
        core.delete_namespaced_pod("router-stand-in", e2e_stack.namespace, grace_period_seconds=0)


def replicas(stack: E2EStack) -> tuple[int | None, str]:
    model = get_model(stack.api, stack.namespace, MODEL) or {}
    decided = (model.get("status") or {}).get("autoscaling") or {}
    return model.get("spec", {}).get("replicas"), str(decided.get("reason", ""))


def test_a_request_held_at_a_router_wakes_a_model_at_zero(stack_ready: E2EStack, router_gauges: Path) -> None:
    stack = stack_ready
    assert replicas(stack) == (0, "Idle")
    router_gauges.write_text(router_page(stack.namespace, {MODEL: (0, 1)}))
    wait_for(lambda: replicas(stack)[0] == 1, timeout=30, interval=0.3, message="woken to 1 replica")
    router_gauges.write_text(router_page(stack.namespace, {MODEL: (0, 0)}))
    stack.wait_ready(MODEL)
    result = stack.client().images.generate(model=MODEL, prompt="awake", size="64x64", response_format="b64_json")
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)
    assert replicas(stack) == (1, "WakeFromZero") or replicas(stack)[0] == 1


def test_sustained_concurrency_scales_to_max_and_back_down_after_the_delay(
    stack_ready: E2EStack, router_gauges: Path
) -> None:
    # Eight clients without pause through the e2e router; the stand-in router replica reports them in flight
    # as a router would (the pods' queues count too: the larger of the two, see autoscaler/decision.py).
    stack = stack_ready
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        client_ = stack.client(max_retries=0, timeout=60.0)
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client_.images.generate(model=MODEL, prompt="busy", size="128x128", response_format="b64_json",
                                        extra_body={"num_inference_steps": 8})  # fmt: skip
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)

    workers = [threading.Thread(target=traffic) for _ in range(8)]
    for worker in workers:
        worker.start()
    router_gauges.write_text(router_page(stack.namespace, {MODEL: (8, 0)}))
    try:
        wait_for(lambda: replicas(stack) == (2, "ScaleUp"), timeout=90, interval=0.3, message="scaled to maxReplicas")
        stack.wait_ready(MODEL, replicas=2)
    finally:
        stop.set()
        router_gauges.write_text(router_page(stack.namespace, {MODEL: (0, 0)}))
        stopped = time.monotonic()  # demand lasts at least until here (requests in flight finish after it)
        for worker in workers:
            worker.join(timeout=70)
    assert not errors, errors[:3]
    wait_for(lambda: replicas(stack) == (1, "ScaleDown"), timeout=60, interval=0.3, message="back down to one")
    assert time.monotonic() - stopped >= AUTOSCALING["scaleDownDelaySeconds"], "not before the delay"
    events = [
        e["reason"]
        for e in list_objects(stack.api, f"/api/v1/namespaces/{stack.namespace}/events")
        if e["involvedObject"].get("name") == MODEL and e["involvedObject"].get("kind") == "ImageModel"
    ]
    assert {"WakeFromZero", "ScaleUp", "ScaleDown"} <= set(events), events


@pytest.fixture(scope="module")
def stack_ready(e2e_stack: E2EStack, router_gauges: Path) -> E2EStack:
    spec: dict[str, Any] = {"source": {"tiny": {}}, "autoscaling": AUTOSCALING}
    e2e_stack.apply_model(MODEL, spec)
    wait_phase(e2e_stack.api, e2e_stack.namespace, MODEL, "Pending", timeout=240, CacheReady="Downloaded")
    wait_for(lambda: replicas(e2e_stack) == (0, "Idle"), timeout=30, interval=0.3, message="at zero, idle")
    return e2e_stack
