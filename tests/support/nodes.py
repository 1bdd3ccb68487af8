"""Fake nodes managed by kwok: two GPU nodes and one CPU-only node.

Every node carries the annotation ``kwok.x-k8s.io/node: fake`` (what our kwok manages), the label
``type: kwok`` and its own ``spec.podCIDR`` (a /24 of the control plane's pod CIDR, 127.10.0.0/16 by
default), from which kwok hands out pod IPs, so a test can bind a real process to a pod's IP. No taints.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import default_pod_cidr
from tests.support.waiting import wait_for

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class FakeNode:
    name: str
    pod_cidr: str
    gpus: int = 0
    cpu: str = "32"
    memory: str = "128Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)

    def capacity(self) -> dict[str, str]:
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            cap[GPU_RESOURCE] = str(self.gpus)
        return cap

    def manifest(self) -> Any:  # a plain dict; the client accepts dicts where it types models
        labels = {
            "type": "kwok",
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {"capacity": self.capacity(), "allocatable": self.capacity()},
        }


GPU_NODE_NAMES = ("gpu-node-0", "gpu-node-1")
CPU_NODE_NAMES = ("cpu-node-0",)


def fake_nodes(pod_cidr: str | None = None) -> tuple[FakeNode, ...]:
    """The nodes, node i getting the (i+1)-th /24 of ``pod_cidr`` (default: the control plane's)."""
    subnets = ipaddress.ip_network(pod_cidr or default_pod_cidr()).subnets(new_prefix=24)
    next(subnets)  # leave the first /24 to kwok's fallback pool
    nodes = [FakeNode(name, str(next(subnets)), gpus=4) for name in GPU_NODE_NAMES]
    nodes += [FakeNode(name, str(next(subnets))) for name in CPU_NODE_NAMES]
    return tuple(nodes)


def _core(kubeconfig: str | Path) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]


def node_ready(node: client.V1Node) -> bool:
    conditions = (node.status and node.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def register_nodes(
    kubeconfig: str | Path,
    nodes: tuple[FakeNode, ...] | None = None,
    pod_cidr: str | None = None,
    timeout: float = 60.0,
) -> list[client.V1Node]:
    """Create (or keep) the fake nodes and wait until kwok has made all of them Ready."""
    nodes = nodes if nodes is not None else fake_nodes(pod_cidr)
    core = _core(kubeconfig)
    for node in nodes:
        try:
            core.create_node(node.manifest())
        except ApiException as e:
            if e.status != 409:
                raise
        # Node create keeps .status today, but make capacity explicit either way (kwok keeps it).
        current = core.read_node(node.name)
        cap = (current.status and current.status.capacity) or {}
        if any(cap.get(k) != v for k, v in node.capacity().items()):
            core.patch_node_status(node.name, {"status": {"capacity": node.capacity(), "allocatable": node.capacity()}})

    def all_ready() -> list[client.V1Node] | None:
        got = [core.read_node(n.name) for n in nodes]
        return got if all(node_ready(n) for n in got) else None

    ready = wait_for(all_ready, timeout=timeout, interval=0.5, message="fake nodes Ready")
    assert ready is not None
    return ready
