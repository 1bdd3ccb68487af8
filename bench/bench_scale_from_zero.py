"""Scale from zero, timed: from the first request for a model at zero replicas to its answer (tiny model).

    python bench/bench_scale_from_zero.py                 # starts its own control plane (tests/support)
    python bench/bench_scale_from_zero.py --runs 3 --timeout 300

It uses the e2e machinery (tests/e2e): a local control plane, the real operator (and its autoscaler), the
real router (`kubediffusion router`, Kubernetes discovery) and the pod runner, which runs the model's
pods as local processes. The model is the tiny CPU model with ``autoscaling: {minReplicas: 0}``. Each
run scales it to zero (a ``/scale`` write, as the autoscaler does when idle), waits until its pod is gone
and the router knows, then sends one request (the official ``openai`` client) and splits the time to the
answer by what watches of the model and its pods see (local clock; the router watches the same way):

    wake-up      request sent -> spec.replicas is 1 (the router held the request and wrote /scale)
    scheduling   -> the model's pod exists and is bound to a node (operator reconcile, Deployment,
                    ReplicaSet, scheduler)
    start        -> its container runs (here the pod runner starts a process; a kubelet would pull the
                    image first: minutes for a CUDA image on a cold node)
    weight load  -> the pod is Ready (the server imports torch, loads the pipeline from the cache volume,
                    makes its warm-up image)
    generation   -> the answer (the router sees the ready pod, sends the held request, the pod generates)

plus the router's own wake-up time (``kubediffusion_router_wake_seconds``: first held request -> /scale
written) and, for comparison, one warm request right after (generation alone). Every step is bounded by
``--timeout``; the bench exits 1 if a run does not finish.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION  # noqa: E402
from tests.cluster.operator_fixture import OperatorProcess, apply_crd, raw, wait_phase  # noqa: E402
from tests.e2e.conftest import DOWNLOADS, autoscaler_env, runner_pod_cidr  # noqa: E402
from tests.e2e.podrunner import PodRunner  # noqa: E402
from tests.e2e.stack import E2EStack, RouterProcess  # noqa: E402
from tests.support.provisioner import HostPathProvisioner, ensure_storage_class  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

MODEL = "cold"
SPEC: dict[str, Any] = {
    "source": {"tiny": {}},
    "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "idleSecondsBeforeZero": 3600},
}
STEPS = (("wake-up", "patched"), ("scheduling", "scheduled"), ("start", "started"), ("weight load", "ready"))


class Watcher:
    """Notes when each step is first seen, from watches of the model and its pods (each from the
    resourceVersion of a list made before the request, so no event is missed however late it connects)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._follow_pods(), self._follow_model())]

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _mark(self, step: str) -> None:
        self.seen.setdefault(step, time.monotonic())

    def _follow_pods(self) -> Callable[[], None]:
        core = client.CoreV1Api(self.api)
        selector = f"kubediffusion.io/model={MODEL},app.kubernetes.io/component=inference"
        version = core.list_namespaced_pod(self.namespace, label_selector=selector).metadata.resource_version

        def follow() -> None:
            nonlocal version
            while not self._stop.is_set():
                events = watch.Watch().stream(
                    core.list_namespaced_pod, self.namespace, label_selector=selector,
                    resource_version=version, timeout_seconds=1,
                )  # fmt: skip
                for event in events:
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp is not None:
                        continue
                    self._mark("created")
                    if pod.spec.node_name:
                        self._mark("scheduled")
                    if any(s.state and s.state.running for s in pod.status.container_statuses or []):
                        self._mark("started")
                    if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                        self._mark("ready")

        return follow

    def _follow_model(self) -> Callable[[], None]:
        custom = client.CustomObjectsApi(self.api)
        where = (GROUP, VERSION, self.namespace, PLURAL)
        field = f"metadata.name={MODEL}"
        version = custom.list_namespaced_custom_object(*where, field_selector=field)["metadata"]["resourceVersion"]

        def follow() -> None:
            nonlocal version
            while not self._stop.is_set():
                events = watch.Watch().stream(
                    custom.list_namespaced_custom_object, *where, field_selector=field,
                    resource_version=version, timeout_seconds=1,
                )  # fmt: skip
                for event in events:
                    model = event["object"]
                    version = model["metadata"]["resourceVersion"]
                    if (model.get("spec") or {}).get("replicas") == 1:
                        self._mark("patched")

        return follow


def router_wake_seconds(router_url: str) -> float:
    text = httpx.get(f"{router_url}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return sum(s.value for s in samples if s.name == "kubediffusion_router_wake_seconds_sum")


def scale_to_zero(stack: E2EStack, timeout: float) -> None:
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{stack.namespace}/imagemodels/{MODEL}/scale"
    code, answer = raw(stack.api, "PATCH", path, {"spec": {"replicas": 0}}, content_type="application/merge-patch+json")
    assert code == 200, answer

    def at_zero() -> bool:
        entry = stack.models().get(MODEL) or {}
        return not stack.pod_ips(MODEL) and entry.get("endpoints") == 0 and entry.get("readyReplicas") == 0

    wait_for(at_zero, timeout=timeout, interval=0.2, message="model at zero, pod gone, router knows")


def one_run(stack: E2EStack, timeout: float) -> dict[str, float]:
    scale_to_zero(stack, timeout)
    woken_before = router_wake_seconds(stack.router.url)
    openai_client = stack.client(timeout=timeout, max_retries=0)
    with Watcher(stack.api, stack.namespace) as watcher:
        t0 = time.monotonic()
        result = openai_client.images.generate(model=MODEL, prompt="cold start", size="64x64")
        answered = time.monotonic()
    assert result.data and result.data[0].b64_json, result
    warm0 = time.monotonic()
    openai_client.images.generate(model=MODEL, prompt="warm", size="64x64")
    warm = time.monotonic() - warm0
    marks = {"sent": t0, **watcher.seen, "answer": answered}
    missing = [step for _, step in STEPS if step not in marks]
    assert not missing, f"never seen: {missing}"
    times: dict[str, float] = {}
    previous = t0
    for label, step in [*STEPS, ("generation", "answer")]:
        times[label] = marks[step] - previous
        previous = marks[step]
    times["total"] = answered - t0
    times["router wake-up"] = router_wake_seconds(stack.router.url) - woken_before
    times["warm request"] = warm
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for each step (setup, each run)")
    args = parser.parse_args()
    from tests.support.controlplane import ControlPlane, default_bin_dir
    from tests.support.nodes import register_nodes

    work = Path(tempfile.mkdtemp(prefix="bench-scale-from-zero-"))
    cp = ControlPlane(default_bin_dir(), work / "cp").start()
    started: list[Any] = []
    results: list[dict[str, float]] = []
    try:
        register_nodes(cp.kubeconfig, pod_cidr=cp.pod_cidr)
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        apply_crd(api)
        ensure_storage_class(api)
        started.append(HostPathProvisioner(api, work / "volumes").start())
        runner = PodRunner(api, work / "volumes", work / "pods", pod_cidr=runner_pod_cidr()).start()
        started.append(runner)
        namespace = f"bench-{os.getpid()}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        wait_for(
            lambda: client.CoreV1Api(api).read_namespaced_service_account("default", namespace),
            timeout=30,
            interval=0.2,
        )
        env = {"KD_OPERATOR_NAMESPACE": namespace, **DOWNLOADS, **autoscaler_env(namespace)}
        operator = OperatorProcess(cp.kubeconfig, work / "operator.log", env=env).start()
        started.append(operator)
        router = RouterProcess(cp.kubeconfig, namespace, work).start()
        started.append(router)
        stack = E2EStack(api=api, namespace=namespace, operator=operator, router=router, runner=runner, workdir=work)
        stack.apply_model(MODEL, SPEC)
        wait_phase(api, namespace, MODEL, "Pending", timeout=args.timeout, CacheReady="Downloaded")
        wait_for(lambda: MODEL in stack.models(), timeout=60, interval=0.3, message="router knows the model")
        for _ in range(args.runs):
            results.append(one_run(stack, args.timeout))
    finally:
        for thing in reversed(started):
            thing.stop()
        cp.stop()
    labels = [label for label, _ in STEPS] + ["generation", "total", "router wake-up", "warm request"]
    print(f"scale from zero, tiny model on CPU (seconds; logs in {work})")
    print(f"{'run':>4} " + " ".join(f"{label:>14}" for label in labels))
    for index, times in enumerate(results, start=1):
        print(f"{index:>4} " + " ".join(f"{times[label]:>14.3f}" for label in labels))
    return 0 if len(results) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
