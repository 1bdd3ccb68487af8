"""Model pods on the dashboards: the PodMonitor for the model pods, the NetworkPolicy rule that lets
Prometheus reach their GET /metrics (and nothing else new), and the Grafana dashboard ConfigMap.

The pods these are checked against are the ones the operator builds (operator/resources.py), so a new
label or port name there fails here first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubediffusion.imagemodel import names
from tests.unit.chart.helm_cli import CHART_DIR, KUBE_VERSION, MONITORING_VALUES, Helm, Manifest, by_kind, one
from tests.unit.chart.model_pod import model_pod
from tests.unit.chart.netpolicy import Endpoint, admitting_rules, ingress_allowed

DASHBOARD_FILE = CHART_DIR / "dashboards" / "kubediffusion.json"


def endpoint(namespace: str, labels: dict[str, str], pod: Manifest | None = None) -> Endpoint:
    pod = pod or {"metadata": {"namespace": namespace, "labels": labels}, "spec": {"containers": []}}
    return Endpoint.of(pod, {"metadata": {"labels": {"kubernetes.io/metadata.name": namespace}}})


def model_endpoint(namespace: str) -> Endpoint:
    return endpoint(namespace, {}, model_pod(namespace))


PROMETHEUS = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}


@pytest.fixture(scope="module")
def monitored(helm: Helm) -> list[Manifest]:
    return helm.template(MONITORING_VALUES)


def test_helm_lint_is_clean_with_monitoring_on(helm: Helm) -> None:
    args = helm.values_args({**MONITORING_VALUES, "grafanaDashboard": {"enabled": True}})
    result = helm.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART_DIR), *args, check=False)
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr


def test_pod_monitor_and_dashboard_are_off_by_default(default_docs: list[Manifest]) -> None:
    assert not by_kind(default_docs, "PodMonitor") and not by_kind(default_docs, "ConfigMap")
    ingress = one(default_docs, "NetworkPolicy", "-inference-ingress")
    assert len(ingress["spec"]["ingress"]) == 1, "no scraper rule unless asked for"


def test_pod_monitor_scrapes_the_http_port_of_serving_model_pods_only(monitored: list[Manifest]) -> None:
    monitor = one(monitored, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "kd-system" and monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    serving = model_pod("kd-system")
    assert selector.items() <= serving["metadata"]["labels"].items()
    assert not selector.items() <= names.labels("sdxl", "cache").items(), "cache Job pods serve no metrics"
    (endpoint_,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint_["path"] == "/metrics" and endpoint_["interval"] == "15s" and endpoint_["scrapeTimeout"] == "10s"
    (container,) = serving["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[endpoint_["port"]] == names.PORT == 8000
    # The pod's model becomes the series' `model` label (Prometheus' name for the pod label).
    (relabel,) = endpoint_["relabelings"]
    source = "__meta_kubernetes_pod_label_" + names.MODEL_LABEL.replace(".", "_").replace("/", "_")
    assert relabel == {"action": "replace", "sourceLabels": [source], "targetLabel": "model"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, {"matchNames": ["kd-system"]}),
        ({"watch": {"namespace": "models"}}, {"matchNames": ["models"]}),
        ({"watch": {"namespace": "models"}, "networkPolicy": {"extraNamespaces": ["more", "models"]}},
         {"matchNames": ["models", "more"]}),
        ({"watch": {"allNamespaces": True}}, {"any": True}),
    ],
    ids=["release-namespace", "watched", "extra", "all"],
)  # fmt: skip
def test_pod_monitor_follows_the_served_namespaces(helm: Helm, values: dict[str, Any], expected: Manifest) -> None:
    docs = helm.template({"podMonitor": {"enabled": True}, **values})
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == expected
    assert "scrapeTimeout" not in monitor["spec"]["podMetricsEndpoints"][0], "Prometheus' default"


def _monitoring_rule(docs: list[Manifest], namespace: str = "kd-system") -> tuple[Manifest, Manifest]:
    policies = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["namespace"] == namespace]
    ingress = one(policies, "NetworkPolicy", "-inference-ingress")
    router_rule, scrapers = ingress["spec"]["ingress"]
    return router_rule, scrapers


def test_network_policy_admits_the_default_monitoring_selector_on_the_metrics_port_only(helm: Helm) -> None:
    docs = helm.template({"podMonitor": {"enabled": True}})
    policies = by_kind(docs, "NetworkPolicy")
    router_rule, scrapers = _monitoring_rule(docs)
    assert scrapers == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
        "ports": [{"protocol": "TCP", "port": names.PORT}],
    }  # fmt: skip
    target = model_endpoint("kd-system")
    prometheus = endpoint("monitoring", PROMETHEUS)
    assert admitting_rules(policies, prometheus, target, names.PORT) == [("kd-kubediffusion-inference-ingress", 1)]
    assert not ingress_allowed(policies, prometheus, target, 9090), "the metrics port only"
    assert not ingress_allowed(policies, endpoint("default", PROMETHEUS), target, names.PORT), "another namespace"
    grafana = endpoint("monitoring", {"app.kubernetes.io/name": "grafana"})
    assert not ingress_allowed(policies, grafana, target, names.PORT), "another pod of the monitoring namespace"
    # The router and the operator's autoscaler keep their rule, unchanged.
    assert router_rule == _monitoring_rule(helm.template({"networkPolicy": {"monitoring": {"enabled": True}}}))[0]
    router = one(docs, "Deployment", "-router")["spec"]["template"]["metadata"]["labels"]
    assert ingress_allowed(policies, endpoint("kd-system", router), target, names.PORT)


def test_network_policy_monitoring_rule_without_pod_monitor_and_with_custom_selectors(helm: Helm) -> None:
    assert _monitoring_rule(helm.template({"networkPolicy": {"monitoring": {"enabled": True}}}))
    network_policy = {**MONITORING_VALUES["networkPolicy"], "extraNamespaces": ["team-a"]}
    docs = helm.template({**MONITORING_VALUES, "watch": {"allNamespaces": True}, "networkPolicy": network_policy})
    policies = by_kind(docs, "NetworkPolicy")
    for namespace in ("kd-system", "team-a"):  # every model namespace gets the rule
        _, scrapers = _monitoring_rule(docs, namespace)
        assert scrapers["from"] == MONITORING_VALUES["networkPolicy"]["monitoring"]["from"]
        target = model_endpoint(namespace)
        for name in ("prometheus", "vmagent"):
            scraper = endpoint("observability", {"app.kubernetes.io/name": name})
            assert ingress_allowed(policies, scraper, target, names.PORT), (namespace, name)
        assert not ingress_allowed(policies, endpoint("monitoring", PROMETHEUS), target, names.PORT)
        assert not ingress_allowed(policies, endpoint("observability", {"app": "x"}), target, names.PORT)


def test_network_policy_disabled_means_no_rule_even_with_pod_monitor(helm: Helm) -> None:
    docs = helm.template({"podMonitor": {"enabled": True}, "networkPolicy": {"enabled": False}})
    assert not by_kind(docs, "NetworkPolicy") and one(docs, "PodMonitor")


def test_dashboard_config_map_carries_the_json_and_the_sidecar_label(helm: Helm) -> None:
    docs = helm.template({"grafanaDashboard": {"enabled": True}})
    config_map = one(docs, "ConfigMap", "-dashboard")
    assert config_map["metadata"]["namespace"] == "kd-system"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in config_map["metadata"]
    (key,) = config_map["data"]
    assert key.endswith(".json")
    assert json.loads(config_map["data"][key]) == json.loads(DASHBOARD_FILE.read_text())

    custom = helm.template({"grafanaDashboard": {
        "enabled": True, "namespace": "grafana", "labels": {"grafana_dashboard": None, "dashboards": "kd"},
        "annotations": {"grafana_folder": "Images"}}})  # fmt: skip
    config_map = one(custom, "ConfigMap", "-dashboard")
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["dashboards"] == "kd"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"], "a default label can be dropped (null)"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Images"}
