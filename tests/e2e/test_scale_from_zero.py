"""Scale from zero through the router: a request for a model at zero replicas is held by the router, which asks
for one replica through the model's scale subresource, and is answered once the pod is ready (the official
openai client, its default timeout). The operator's autoscaler finds no router replica here (the e2e router is a
local process, not a pod, see test_elastic.py): the router's own /scale write is what wakes the model.

Tests run in file order on one model.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.operator_fixture import get_model, raw, wait_phase
from tests.e2e.stack import E2EStack, decode_image
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "cold"
HELD = 3
ROUTER_ENV = {"KD_ROUTER_MAX_HELD_REQUESTS": str(HELD), "KD_ROUTER_HOLD_RETRY_AFTER": "11"}
AUTOSCALING = {"minReplicas": 0, "maxReplicas": 1, "idleSecondsBeforeZero": 3600}


def spec_replicas(stack: E2EStack) -> int | None:
    replicas = ((get_model(stack.api, stack.namespace, MODEL) or {}).get("spec") or {}).get("replicas")
    return replicas if isinstance(replicas, int) else None


def router_gauge(stack: E2EStack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.router.url}/metrics", timeout=10).text
    wanted = {"model": MODEL, "namespace": stack.namespace, **labels}
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return sum(s.value for s in samples if s.name == name and s.labels == wanted)


def at_zero(stack: E2EStack) -> bool:
    entry = stack.models().get(MODEL) or {}
    return spec_replicas(stack) == 0 and not stack.pod_ips(MODEL) and entry.get("endpoints") == 0


@pytest.fixture(scope="module")
def cold(e2e_stack: E2EStack) -> E2EStack:
    e2e_stack.apply_model(MODEL, {"source": {"tiny": {}}, "autoscaling": AUTOSCALING})
    wait_phase(e2e_stack.api, e2e_stack.namespace, MODEL, "Pending", timeout=240, CacheReady="Downloaded")
    wait_for(lambda: at_zero(e2e_stack), timeout=60, interval=0.3, message="at zero, known to the router")
    return e2e_stack


def test_a_request_for_a_model_at_zero_is_held_woken_and_answered(cold: E2EStack) -> None:
    stack = cold
    default_client = openai.OpenAI(base_url=f"{stack.router.url}/v1", api_key="unused")  # default timeout: 10 min
    result = default_client.images.generate(model=MODEL, prompt="wake up", size="64x64", response_format="b64_json")
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)
    assert spec_replicas(stack) == 1
    assert router_gauge(stack, "kubediffusion_router_wakeups_total", outcome="scaled") == 1  # the router woke it
    assert router_gauge(stack, "kubediffusion_router_held_requests") == 0
    assert router_gauge(stack, "kubediffusion_router_inflight_requests") == 0


def test_a_full_hold_queue_answers_429_with_retry_after_and_the_held_requests_succeed(cold: E2EStack) -> None:
    stack = cold
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{stack.namespace}/imagemodels/{MODEL}/scale"
    code, answer = raw(stack.api, "PATCH", path, {"spec": {"replicas": 0}}, content_type="application/merge-patch+json")
    assert code == 200, answer
    wait_for(lambda: at_zero(stack), timeout=60, interval=0.3, message="back at zero")
    results: list[Any] = []

    def held_request() -> None:
        try:
            results.append(stack.client(max_retries=0, timeout=240).images.generate(
                model=MODEL, prompt="held", size="64x64", response_format="b64_json"))  # fmt: skip
        except BaseException as exc:  # asserted below
            results.append(exc)

    workers = [threading.Thread(target=held_request) for _ in range(HELD)]
    for worker in workers:
        worker.start()
    wait_for(
        lambda: router_gauge(stack, "kubediffusion_router_held_requests") == HELD,
        timeout=30, interval=0.05, message=f"{HELD} requests held",
    )  # fmt: skip
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        stack.client(max_retries=0, timeout=30).images.generate(model=MODEL, prompt="one too many", size="64x64")
    assert time.monotonic() - started < 10, "a full hold queue answers at once"
    assert refused.value.response.headers["retry-after"] == "11" and refused.value.code == "queue_full"
    for worker in workers:
        worker.join(timeout=240)
    assert len(results) == HELD and all(not isinstance(r, BaseException) for r in results), results
    assert spec_replicas(stack) == 1
    assert router_gauge(stack, "kubediffusion_router_held_requests") == 0
