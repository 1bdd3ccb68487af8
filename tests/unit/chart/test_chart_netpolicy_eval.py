"""The NetworkPolicy evaluator the chart and e2e tests rely on (tests/unit/chart/netpolicy.py) follows the
Kubernetes semantics where they are easy to get wrong: AND within a peer, OR across peers, the policy's own
namespace for a lone podSelector, named ports, and a pod no policy selects."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart.netpolicy import Endpoint, admitting_rules, ingress_allowed, selector_matches

TARGET = Endpoint("models", {"kubernetes.io/metadata.name": "models"}, {"app": "model"}, "10.0.0.5",
                  {"http": (8000, "TCP")})  # fmt: skip
PROM = Endpoint("monitoring", {"kubernetes.io/metadata.name": "monitoring"}, {"app": "prometheus"}, "10.0.1.7")
GRAFANA = Endpoint("monitoring", {"kubernetes.io/metadata.name": "monitoring"}, {"app": "grafana"}, "10.0.1.8")
PROM_ELSEWHERE = Endpoint("team-a", {"kubernetes.io/metadata.name": "team-a"}, {"app": "prometheus"}, "10.0.2.9")
NEIGHBOUR = Endpoint("models", {"kubernetes.io/metadata.name": "models"}, {"app": "prometheus"}, "10.0.0.6")
MONITORING_NS = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
PROMETHEUS = {"matchLabels": {"app": "prometheus"}}


def policy(*rules: dict[str, Any], selector: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "models"},
        "spec": {"podSelector": selector if selector is not None else {"matchLabels": {"app": "model"}},
                 "policyTypes": ["Ingress"], "ingress": list(rules), **spec},
    }  # fmt: skip


def allowed(policies: list[dict[str, Any]], source: Endpoint, port: int = 8000) -> bool:
    return ingress_allowed(policies, source, TARGET, port)


def test_namespace_and_pod_selector_in_one_peer_are_anded() -> None:
    rule = {"from": [{"namespaceSelector": MONITORING_NS, "podSelector": PROMETHEUS}]}
    assert allowed([policy(rule)], PROM)
    assert not allowed([policy(rule)], GRAFANA), "right namespace, wrong pod"
    assert not allowed([policy(rule)], PROM_ELSEWHERE), "right pod, wrong namespace"


def test_separate_peers_are_ored() -> None:
    rule = {"from": [{"namespaceSelector": MONITORING_NS}, {"podSelector": PROMETHEUS}]}
    assert allowed([policy(rule)], GRAFANA), "every pod of the monitoring namespace"
    assert allowed([policy(rule)], NEIGHBOUR), "a lone podSelector: pods of the policy's own namespace"
    assert not allowed([policy(rule)], PROM_ELSEWHERE)


def test_ports_numbers_ranges_names_and_protocols() -> None:
    def rule(*ports: dict[str, Any]) -> dict[str, Any]:
        return {"from": [{"namespaceSelector": MONITORING_NS}], "ports": list(ports)}

    assert allowed([policy(rule({"protocol": "TCP", "port": 8000}))], PROM)
    assert not allowed([policy(rule({"protocol": "TCP", "port": 8000}))], PROM, port=9090)
    assert not allowed([policy(rule({"protocol": "UDP", "port": 8000}))], PROM)
    assert allowed([policy(rule({"port": 7000, "endPort": 8080}))], PROM), "TCP is the default protocol"
    assert allowed([policy(rule({"port": "http"}))], PROM), "named: the destination's container port"
    assert not allowed([policy(rule({"port": "metrics"}))], PROM)
    assert allowed([policy({"from": [{"namespaceSelector": MONITORING_NS}]})], PROM, port=1234), "no ports: all"


def test_isolation_only_for_selected_pods_and_an_empty_rule_list_denies_all() -> None:
    other = policy({"from": []}, selector={"matchLabels": {"app": "other"}})
    assert allowed([other], PROM_ELSEWHERE), "no policy selects the target"
    assert not allowed([policy()], PROM), "selected, no rules: nothing is admitted"
    assert allowed([policy({})], PROM_ELSEWHERE), "a rule without from or ports admits everything"
    egress_only = policy(selector={}, policyTypes=["Egress"])
    assert allowed([egress_only], PROM_ELSEWHERE)


def test_rules_of_all_selecting_policies_add_up_and_name_the_rule() -> None:
    router = policy({"from": [{"podSelector": {"matchLabels": {"app": "router"}}}]})
    monitoring = policy({"from": [{"namespaceSelector": MONITORING_NS, "podSelector": PROMETHEUS}]})
    monitoring["metadata"]["name"] = "q"
    assert admitting_rules([router, monitoring], PROM, TARGET, 8000) == [("q", 0)]


def test_ip_blocks_with_exceptions() -> None:
    rule = {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}
    assert allowed([policy(rule)], PROM)
    assert not allowed([policy(rule)], PROM_ELSEWHERE)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["prometheus", "x"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["prometheus"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, False),
        ({"matchLabels": {"app": "prometheus"}, "matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
    ],
)
def test_label_selectors(selector: dict[str, Any], expected: bool) -> None:
    assert selector_matches(selector, {"app": "prometheus"}) is expected
