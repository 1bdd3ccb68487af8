"""Model pods of another engine than diffusers reach their upstream (networkPolicy.engine): anywhere by
default, only the listed peers and ports when set; diffusers pods never get this rule (DNS only)."""

from __future__ import annotations

from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.operator.parts import Context
from kubediffusion.operator.resources import build_deployment
from tests.unit.chart.helm_cli import Helm, Manifest, one
from tests.unit.chart.model_pod import model_pod
from tests.unit.chart.netpolicy import Endpoint, peer_admits, policy_types, selector_matches

ENGINE_SPEC = {"engine": {"name": "openai", "url": "https://images.example.com/v1", "model": "x"}}
PROVIDER_NET = {"ipBlock": {"cidr": "203.0.113.0/24"}}


def engine_pod(namespace: str) -> Manifest:
    spec = ImageModelSpec.from_body({"spec": ENGINE_SPEC})
    owner = names.Owner(name="upstream", namespace=namespace, uid="uid")
    ctx = Context(owner=owner, image="img:1", hardware=resolve_resources(spec.resources, {}))
    template = build_deployment(spec, ctx, replicas=1)["spec"]["template"]
    return {"metadata": {**template["metadata"], "namespace": namespace}, "spec": template["spec"]}


def engine_policy(docs: list[Manifest]) -> Manifest:
    policy = one(docs, "NetworkPolicy", "-engine-egress")
    assert policy_types(policy) == ["Egress"]
    return policy


def test_engine_pods_only_are_selected(default_docs: list[Manifest]) -> None:
    policy = engine_policy(default_docs)
    namespace = policy["metadata"]["namespace"]
    assert selector_matches(policy["spec"]["podSelector"], engine_pod(namespace)["metadata"]["labels"])
    assert not selector_matches(policy["spec"]["podSelector"], model_pod(namespace)["metadata"]["labels"])


def test_by_default_an_engine_pod_may_reach_any_upstream(default_docs: list[Manifest]) -> None:
    assert engine_policy(default_docs)["spec"]["egress"] == [{}]


def test_listed_peers_and_ports_narrow_it(helm: Helm) -> None:
    values: dict[str, Any] = {"networkPolicy": {"engine": {"egressTo": [PROVIDER_NET], "egressPorts": [443]}}}
    [rule] = engine_policy(helm.template(values))["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    provider = Endpoint("", {}, {}, ip="203.0.113.9")
    elsewhere = Endpoint("", {}, {}, ip="198.51.100.1")
    assert any(peer_admits(peer, "models", provider) for peer in rule["to"])
    assert not any(peer_admits(peer, "models", elsewhere) for peer in rule["to"])
