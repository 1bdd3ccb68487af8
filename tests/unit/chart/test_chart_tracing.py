"""tracing.otlpEndpoint: one collector for the router and, through the operator, the model pods; their egress
NetworkPolicy admits that collector on its port (the peer the endpoint names, or tracing.egressTo), and
nothing else new. Off by default: nobody traces and the serving pods reach DNS only."""

from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.operator.settings import OperatorSettings
from tests.unit.chart.helm_cli import CHART_DIR, KUBE_VERSION, Helm, Manifest, container_env, one
from tests.unit.chart.model_pod import model_pod
from tests.unit.chart.netpolicy import Endpoint, peer_admits, policy_types, selector_matches

COLLECTOR = "http://otel-collector.monitoring:4318"


def tracing(endpoint: str, **more: Any) -> dict[str, Any]:
    return {"tracing": {"otlpEndpoint": endpoint, **more}}


def env_of(docs: list[Manifest], component: str) -> dict[str, str]:
    return container_env(one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"], component)


def collector_rules(docs: list[Manifest]) -> list[dict[str, Any]]:
    """The egress rules of the serving pods' policy other than DNS."""
    policy = one(docs, "NetworkPolicy", "-inference-egress")
    assert policy_types(policy) == ["Egress"]
    serving = model_pod(policy["metadata"]["namespace"])
    assert selector_matches(policy["spec"]["podSelector"], serving["metadata"]["labels"])
    return [rule for rule in policy["spec"]["egress"] if rule.get("to")]


def pod(namespace: str, ip: str = "") -> Endpoint:
    return Endpoint(namespace, {"kubernetes.io/metadata.name": namespace}, {"app": "otel-collector"}, ip=ip)


def reaches(docs: list[Manifest], target: Endpoint, port: int) -> bool:
    policy = one(docs, "NetworkPolicy", "-inference-egress")
    return any(
        any(peer_admits(peer, policy["metadata"]["namespace"], target) for peer in rule["to"])
        and any(entry["port"] == port and entry["protocol"] == "TCP" for entry in rule["ports"])
        for rule in collector_rules(docs)
    )


def test_off_by_default_nobody_traces(default_docs: list[Manifest]) -> None:
    assert env_of(default_docs, "router")["KD_ROUTER_OTLP_ENDPOINT"] == ""
    assert env_of(default_docs, "operator")["KD_OPERATOR_OTLP_ENDPOINT"] == ""
    assert collector_rules(default_docs) == []


def test_one_endpoint_reaches_the_router_the_operator_and_the_model_pods_egress(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = helm.template(tracing(COLLECTOR))
    assert env_of(docs, "router")["KD_ROUTER_OTLP_ENDPOINT"] == COLLECTOR
    operator_env = env_of(docs, "operator")
    for name, value in operator_env.items():
        monkeypatch.setenv(name, value)
    assert OperatorSettings().otlp_endpoint == COLLECTOR  # which the operator sets in every model pod
    (rule,) = collector_rules(docs)
    assert rule["ports"] == [{"protocol": "TCP", "port": 4318}]
    assert reaches(docs, pod("monitoring"), 4318)
    assert not reaches(docs, pod("monitoring"), 4317) and not reaches(docs, pod("default"), 4318)
    cache = one(docs, "NetworkPolicy", "-cache-job-egress")
    assert cache == one(helm.template(), "NetworkPolicy", "-cache-job-egress")  # cache Jobs do not trace


def test_the_routers_own_endpoint_wins_for_the_router_only(helm: Helm) -> None:
    docs = helm.template({**tracing(COLLECTOR), "router": {"tracing": {"otlpEndpoint": "http://router-traces:4318"}}})
    assert env_of(docs, "router")["KD_ROUTER_OTLP_ENDPOINT"] == "http://router-traces:4318"
    assert env_of(docs, "operator")["KD_OPERATOR_OTLP_ENDPOINT"] == COLLECTOR
    router_only = helm.template({"router": {"tracing": {"otlpEndpoint": "http://router-traces:4318"}}})
    assert env_of(router_only, "operator")["KD_OPERATOR_OTLP_ENDPOINT"] == "" and collector_rules(router_only) == []


@pytest.mark.parametrize(
    ("endpoint", "target", "port"),
    [
        ("https://otel.observability.svc.cluster.local/", pod("observability"), 443),
        ("http://otel-collector", pod("kd-system"), 80),  # a bare Service name: the model pods' namespace
        ("http://10.1.2.3:4318", pod("elsewhere", ip="10.1.2.3"), 4318),
        ("http://[fd00::7]:4318", pod("elsewhere", ip="fd00::7"), 4318),
    ],
)
def test_the_collectors_peer_and_port_follow_the_endpoint(
    helm: Helm, endpoint: str, target: Endpoint, port: int
) -> None:
    docs = helm.template(tracing(endpoint))
    assert reaches(docs, target, port)
    assert not reaches(docs, pod("someone-else", ip="10.9.9.9"), port)


def test_another_host_needs_egress_to_and_egress_to_replaces_the_derived_peer(helm: Helm) -> None:
    error = helm.template_error(tracing("https://api.traces.example.com"))
    assert "tracing.egressTo" in error and "api.traces.example.com" in error
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    docs = helm.template(tracing("https://api.traces.example.com", egressTo=peers))
    (rule,) = collector_rules(docs)
    assert rule == {"to": peers, "ports": [{"protocol": "TCP", "port": 443}]}


@pytest.mark.parametrize(
    "values",
    [tracing("otel-collector:4318"), tracing(COLLECTOR, egressTo=[{}]), tracing(COLLECTOR, sampler="always")],
)
def test_the_schema_refuses_what_the_chart_cannot_use(helm: Helm, values: dict[str, Any]) -> None:
    assert "tracing" in helm.template_error(values)


def test_helm_lint_is_clean_with_tracing_on(helm: Helm) -> None:
    args = helm.values_args(tracing(COLLECTOR))
    result = helm.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART_DIR), *args, check=False)
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr
