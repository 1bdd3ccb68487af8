"""Prometheus may scrape the model pods, and no one else gets in that way: the chart's inference NetworkPolicy
and PodMonitor, asked about real pods.

A real model pod (the operator's, serving the tiny model) and two identical scraper pods, one in the
monitoring namespace and one in another namespace, all run by the e2e pod runner. Both scrapers fetch
the model pod's GET /metrics: the local control plane has no network plugin, so nothing enforces a
NetworkPolicy here and both get through. The verdict is the policy's: the chart's NetworkPolicies,
applied to the model namespace (the API server validates and defaults them) and read back, are evaluated
(tests/unit/chart/netpolicy.py: peer selectors AND-ed, named ports) against the pods and namespaces as the
API server has them. The scraper in the monitoring namespace is admitted, by the monitoring rule, on the
metrics port only; the one elsewhere is not, nor is another pod of the monitoring namespace.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kubediffusion.imagemodel import names
from tests.cluster.operator_fixture import list_objects
from tests.e2e.runner_node import NODE_NAME
from tests.e2e.stack import E2EStack
from tests.support.waiting import wait_for
from tests.unit.chart.helm_cli import Helm, HelmMissingError, by_kind, find_helm, one
from tests.unit.chart.netpolicy import Endpoint, admitting_rules, ingress_allowed, selector_matches

pytestmark = pytest.mark.e2e

MODEL = "scraped"
SCRAPER_LABELS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
# Fetch GET /metrics once and keep the model server's series as the termination message.
SCRAPE = (
    "import sys, urllib.request\n"
    "text = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()\n"
    "kept = [line for line in text.splitlines() if line.startswith('kubediffusion_inference_')]\n"
    "open(sys.argv[2], 'w').write('\\n'.join(kept[:20]))\n"
)


@pytest.fixture(scope="module")
def namespaces(e2e_stack: E2EStack) -> Iterator[dict[str, str]]:
    """The model namespace (the stack's), a monitoring namespace and another one."""
    core = client.CoreV1Api(e2e_stack.api)
    created = {"models": e2e_stack.namespace, "monitoring": f"{e2e_stack.namespace}-mon",
               "other": f"{e2e_stack.namespace}-other"}  # fmt: skip
    for key in ("monitoring", "other"):
        core.create_namespace({"metadata": {"name": created[key], "labels": {"kubediffusion.io/test": "true"}}})
    try:
        yield created
    finally:
        for key in ("monitoring", "other"):
            core.delete_namespace(created[key])


@pytest.fixture(scope="module")
def chart(namespaces: dict[str, str]) -> list[dict[str, Any]]:
    """The chart rendered for a release in the model namespace, its Prometheus in the monitoring namespace."""
    try:
        helm = Helm(find_helm())
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    scrapers = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespaces["monitoring"]}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip
    values = {"podMonitor": {"enabled": True}, "networkPolicy": {"monitoring": {"from": [scrapers]}}}
    return helm.template(values, release="kd", namespace=namespaces["models"])


@pytest.fixture(scope="module")
def policies(e2e_stack: E2EStack, chart: list[dict[str, Any]], namespaces: dict[str, str]) -> list[dict[str, Any]]:
    """The chart's NetworkPolicies as the API server stored them in the model namespace."""
    networking = client.NetworkingV1Api(e2e_stack.api)
    for policy in by_kind(chart, "NetworkPolicy"):
        networking.create_namespaced_network_policy(namespaces["models"], policy)
    return list_objects(e2e_stack.api, f"/apis/networking.k8s.io/v1/namespaces/{namespaces['models']}/networkpolicies")


@pytest.fixture(scope="module")
def model_pod(e2e_stack: E2EStack) -> dict[str, Any]:
    """The operator's pod of a tiny model, Ready, as the API server has it."""
    e2e_stack.apply_model(MODEL, {"source": {"tiny": {}}})
    e2e_stack.wait_ready(MODEL)
    selector = ",".join(f"{k}={v}" for k, v in names.selector(MODEL).items())
    (pod,) = list_objects(e2e_stack.api, f"/api/v1/namespaces/{e2e_stack.namespace}/pods", selector)
    return pod


def _scrape(stack: E2EStack, namespace: str, name: str, labels: dict[str, str], url: str) -> dict[str, Any]:
    """Run a scraper pod on the runner's node to completion; the pod as the API server then has it."""
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": NODE_NAME,
            "restartPolicy": "Never",
            "containers": [{"name": "scrape", "image": "prometheus:e2e",
                            "command": [sys.executable, "-c", SCRAPE, url, "/dev/termination-log"]}],
        },
    })  # fmt: skip

    def finished() -> dict[str, Any] | None:
        pod: dict[str, Any] = stack.api.sanitize_for_serialization(core.read_namespaced_pod(name, namespace))
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout=90, interval=0.3, message=f"scraper {namespace}/{name} finished")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    return pod


def _namespace(stack: E2EStack, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = stack.api.sanitize_for_serialization(client.CoreV1Api(stack.api).read_namespace(name))
    return namespace


def _scraped_series(pod: dict[str, Any]) -> str:
    (status,) = pod["status"]["containerStatuses"]
    return str(status["state"]["terminated"].get("message") or "")


def test_prometheus_in_the_monitoring_namespace_is_admitted_and_one_elsewhere_is_not(
    e2e_stack: E2EStack, namespaces: dict[str, str], policies: list[dict[str, Any]], model_pod: dict[str, Any]
) -> None:
    stack = e2e_stack
    (container,) = model_pod["spec"]["containers"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == names.PORT_NAME)
    url = f"http://{model_pod['status']['podIP']}:{port}/metrics"

    admitted = _scrape(stack, namespaces["monitoring"], "prometheus-0", SCRAPER_LABELS, url)
    elsewhere = _scrape(stack, namespaces["other"], "prometheus-0", SCRAPER_LABELS, url)
    neighbour = _scrape(stack, namespaces["monitoring"], "grafana-0", {"app.kubernetes.io/name": "grafana"}, url)
    for pod in (admitted, elsewhere, neighbour):  # nothing enforces policies here: all three got through
        assert "kubediffusion_inference_queue_depth" in _scraped_series(pod), pod["metadata"]

    target = Endpoint.of(model_pod, _namespace(stack, namespaces["models"]))
    prometheus, stranger, grafana = (
        Endpoint.of(pod, _namespace(stack, pod["metadata"]["namespace"])) for pod in (admitted, elsewhere, neighbour)
    )
    assert prometheus.labels == stranger.labels and prometheus.ip != stranger.ip, "the same pod but for its namespace"
    ingress = "kd-kubediffusion-inference-ingress"
    assert admitting_rules(policies, prometheus, target, port) == [(ingress, 1)], "the monitoring rule, only"
    assert ingress_allowed(policies, prometheus, target, port)
    assert not ingress_allowed(policies, prometheus, target, port + 1), "the metrics port only"
    assert not ingress_allowed(policies, stranger, target, port), "Prometheus of another namespace"
    assert not ingress_allowed(policies, grafana, target, port), "another pod of the monitoring namespace"


def test_the_pod_monitor_selects_the_model_pod_and_its_metrics_port(
    e2e_stack: E2EStack, chart: list[dict[str, Any]], model_pod: dict[str, Any], namespaces: dict[str, str]
) -> None:
    monitor = one(chart, "PodMonitor")
    assert selector_matches(monitor["spec"]["selector"], model_pod["metadata"]["labels"])
    assert namespaces["models"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = model_pod["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]} and endpoint["path"] == "/metrics"
    # The relabeling's source is the pod label that names the model.
    (relabel,) = endpoint["relabelings"]
    label = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
    (key,) = [k for k in model_pod["metadata"]["labels"] if k.replace(".", "_").replace("/", "_") == label]
    assert model_pod["metadata"]["labels"][key] == MODEL
    # The cache Job's pod carries the model label too, but is no scrape target.
    cache_pods = list_objects(e2e_stack.api, f"/api/v1/namespaces/{namespaces['models']}/pods",
                              f"{names.MODEL_LABEL}={MODEL},{names.COMPONENT_LABEL}=cache")  # fmt: skip
    assert cache_pods and not any(selector_matches(monitor["spec"]["selector"], p["metadata"]["labels"])
                                  for p in cache_pods)  # fmt: skip
