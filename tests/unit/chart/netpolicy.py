"""A small evaluator of Kubernetes NetworkPolicy ingress rules, for tests.

The local control plane has no network plugin, so nothing enforces a NetworkPolicy there: tests ask the
policies' rules instead, with the semantics of the Kubernetes documentation (networking.k8s.io/v1):

- A pod is isolated for ingress when a policy of its namespace selects it (``podSelector``) and lists
  ``Ingress`` in ``policyTypes`` (absent: ``Ingress``, plus ``Egress`` when it has egress rules). A pod no
  policy selects accepts everything.
- An isolated pod accepts a connection when some rule of some policy selecting it admits both the source
  (``from``; absent or empty: every source) and the port (``ports``; absent or empty: every port).
- The peers of a ``from`` list are OR-ed. Within one peer, ``namespaceSelector`` and ``podSelector`` are
  AND-ed (pods matching the one, in namespaces matching the other); ``podSelector`` alone means pods of
  the policy's own namespace; ``namespaceSelector`` alone, every pod of those namespaces; ``ipBlock``, the
  source's address inside ``cidr`` and outside every ``except``.
- A port entry matches its ``protocol`` (default TCP) and a number, a range up to ``endPort``, or a
  named port, resolved against the destination pod's container ports.

Policies and pods are plain manifests (dicts), as the API server returns them or ``helm template`` renders.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Manifest = Mapping[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod's namespace (and its labels), its labels, address and named ports."""

    namespace: str
    namespace_labels: Mapping[str, str]
    labels: Mapping[str, str]
    ip: str = ""
    named_ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # name -> (port, protocol)

    @classmethod
    def of(cls, pod: Manifest, namespace: Manifest) -> Endpoint:
        """From a Pod and its Namespace (the API server labels every namespace kubernetes.io/metadata.name)."""
        named: dict[str, tuple[int, str]] = {}
        for container in pod["spec"].get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name"):
                    named[port["name"]] = (int(port["containerPort"]), port.get("protocol") or "TCP")
        return cls(
            namespace=pod["metadata"]["namespace"],
            namespace_labels=dict(namespace["metadata"].get("labels") or {}),
            labels=dict(pod["metadata"].get("labels") or {}),
            ip=(pod.get("status") or {}).get("podIP") or "",
            named_ports=named,
        )


def selector_matches(selector: Manifest | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpression holds ({} matches everything)."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def policy_types(policy: Manifest) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def selects(policy: Manifest, pod: Endpoint) -> bool:
    """The policy isolates this pod for ingress."""
    return (
        policy["metadata"]["namespace"] == pod.namespace
        and "Ingress" in policy_types(policy)
        and selector_matches(policy["spec"].get("podSelector"), pod.labels)
    )


def peer_admits(peer: Manifest, policy_namespace: str, source: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if not source.ip:
            return False
        address = ipaddress.ip_address(source.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(c) for c in block.get("except") or [])
    if "namespaceSelector" in peer:
        namespace_ok = selector_matches(peer["namespaceSelector"], source.namespace_labels)
    else:
        namespace_ok = source.namespace == policy_namespace
    pods_ok = "podSelector" not in peer or selector_matches(peer["podSelector"], source.labels)
    return namespace_ok and pods_ok


def port_admits(entry: Manifest, port: int, protocol: str, destination: Endpoint) -> bool:
    if (entry.get("protocol") or "TCP") != protocol:
        return False
    wanted = entry.get("port")
    if wanted is None:
        return True  # every port of that protocol
    if isinstance(wanted, str) and not wanted.isdigit():
        named = destination.named_ports.get(wanted)
        return named is not None and named == (port, protocol)
    low = int(wanted)
    return low <= port <= int(entry.get("endPort") or low)


def admitting_rules(
    policies: Iterable[Manifest], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> list[tuple[str, int]]:
    """(policy name, rule index) of every ingress rule, of the policies selecting ``destination``, that
    admits this connection."""
    found: list[tuple[str, int]] = []
    for policy in policies:
        if not selects(policy, destination):
            continue
        for index, rule in enumerate(policy["spec"].get("ingress") or []):
            peers: Sequence[Manifest] = rule.get("from") or []
            ports: Sequence[Manifest] = rule.get("ports") or []
            source_ok = not peers or any(peer_admits(p, policy["metadata"]["namespace"], source) for p in peers)
            port_ok = not ports or any(port_admits(p, port, protocol, destination) for p in ports)
            if source_ok and port_ok:
                found.append((policy["metadata"]["name"], index))
    return found


def ingress_allowed(
    policies: Iterable[Manifest], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``destination`` accepts a connection from ``source`` on ``port`` under these policies."""
    policies = list(policies)
    if not any(selects(policy, destination) for policy in policies):
        return True  # not isolated
    return bool(admitting_rules(policies, source, destination, port, protocol))
