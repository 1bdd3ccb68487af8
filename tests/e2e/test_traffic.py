"""Traffic while the cluster changes: scaling out, a pod dying mid-request, a spec change rolling out.

One model in its own stack; tests run in file order and build on each other's state.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.cluster.operator_fixture import get_model, patch_model_spec
from tests.e2e.stack import E2EStack, decode_image
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "busy"
REQUEST_TIMEOUT = 60.0  # "never a hang": every request ends well within this


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack) -> E2EStack:
    e2e_stack.apply_model(MODEL, {"source": {"tiny": {}}, "replicas": 1})
    e2e_stack.wait_ready(MODEL)
    return e2e_stack


def generate(stack: E2EStack, size: int = 64, **extra: Any) -> str:
    """One request with no client retries: returns "ok", "503", or raises on anything else."""
    try:
        result = stack.client(max_retries=0, timeout=REQUEST_TIMEOUT).images.generate(
            model=MODEL,
            prompt="busy",
            size=f"{size}x{size}",  # type: ignore[arg-type]
            response_format="b64_json",
            extra_body=extra or None,
        )
    except openai.APIStatusError as exc:
        if exc.status_code == 503 and exc.response.headers.get("retry-after"):
            return "503"
        raise
    assert decode_image(result.data[0].b64_json or "").size == (size, size)
    return "ok"


def test_scaling_to_two_replicas_spreads_traffic(stack: E2EStack) -> None:
    patch_model_spec(stack.api, stack.namespace, MODEL, {"replicas": 2})
    stack.wait_ready(MODEL, replicas=2)
    ips = stack.pod_ips(MODEL)
    assert len(ips) == 2
    before = {ip: stack.pod_request_count(ip) for ip in ips}
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda _: generate(stack, num_inference_steps=4), range(12)))
    assert outcomes == ["ok"] * 12
    served = {ip: stack.pod_request_count(ip) - before[ip] for ip in ips}
    assert sum(served.values()) == 12 and all(count >= 2 for count in served.values()), served


def test_a_pod_killed_mid_request_fails_over_and_is_reported(stack: E2EStack) -> None:
    processes = stack.runner.processes(stack.namespace)
    victim_name, victim = next((name, p) for name, p in processes.items() if name.startswith(f"im-{MODEL}-"))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(generate(stack, size=256, num_inference_steps=8))  # the slowest the limits allow
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let requests land on both pods; this is the "mid-request" moment, not a wait-for
    victim.kill()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT + 10)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert not errors, errors
    assert set(results) <= {"ok", "503"} and results.count("ok") >= 1, results

    def failure_reported() -> dict[str, Any] | None:
        status = (get_model(stack.api, stack.namespace, MODEL) or {}).get("status") or {}
        failure = status.get("lastFailure") or {}
        recovered = status.get("phase") == "Ready" and failure.get("reason") == "ContainerRestarted"
        return failure if recovered and failure.get("exitCode") == 137 else None

    # The runner restarts the container (restartPolicy Always); the model is Ready again, the router
    # uses both pods, and status keeps the crash in lastFailure (the operator notices on its resync).
    stack.wait_ready(MODEL, replicas=2)
    failure = wait_for(failure_reported, timeout=30, interval=0.3, message="the operator reports the crash")
    assert victim_name in failure["message"] and "recovered" in failure["message"]
    assert victim_name in stack.runner.processes(stack.namespace)


def test_spec_change_while_traffic_runs_fails_no_request(stack: E2EStack) -> None:
    deployments = f"/apis/apps/v1/namespaces/{stack.namespace}/deployments/im-{MODEL}"
    old_ips = set(stack.pod_ips(MODEL))
    outcomes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline and len(outcomes) < 2000:
            try:
                outcomes.append(generate(stack))
            except BaseException as exc:
                errors.append(exc)

    runners = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in runners:
        thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 4, timeout=60, interval=0.1, message="traffic flowing")
        patch_model_spec(stack.api, stack.namespace, MODEL, {"defaults": {"steps": 3, "size": "64x64"}})

        def rolled_out() -> bool:
            from tests.cluster.operator_fixture import raw

            _, deployment = raw(stack.api, "GET", deployments)
            status = deployment.get("status") or {}
            new_ips = set(stack.pod_ips(MODEL))
            return (
                status.get("observedGeneration") == deployment["metadata"]["generation"]
                and status.get("updatedReplicas") == 2
                and status.get("readyReplicas") == 2
                and status.get("replicas") == 2
                and not (new_ips & old_ips)
                and stack.routed_endpoints(MODEL) == 2
            )

        wait_for(rolled_out, timeout=180, interval=0.5, message="the new pod template rolled out")
        settled = len(outcomes)
        wait_for(lambda: len(outcomes) >= settled + 4, timeout=60, interval=0.1, message="traffic after rollout")
    finally:
        stop.set()
        for thread in runners:
            thread.join(timeout=REQUEST_TIMEOUT + 10)
    assert not errors, errors[:3]
    assert outcomes and set(outcomes) == {"ok"}, f"{outcomes.count('503')} of {len(outcomes)} answered 503"
    # The new pods really serve the new defaults.
    info = httpx.get(f"http://{stack.pod_ips(MODEL)[0]}:8000/info", timeout=10).json()
    assert info["defaults"]["steps"] == 3
