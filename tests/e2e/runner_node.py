"""The pod runner's Node (``runner-0``): registered, tainted so only pods that tolerate it land there, and kept
Ready with a Lease and status as a kubelet keeps its node (tests/e2e/podrunner.py runs its pods)."""

from __future__ import annotations

import datetime as dt

from kubernetes import client
from kubernetes.client.exceptions import ApiException

NODE_NAME = "runner-0"
RUNNER_LABEL = "kubediffusion.io/runner"
TAINT = {"key": RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}
# What an ImageModel/pod needs in order to land on the runner's node.
PLACEMENT = {
    "nodeSelector": {RUNNER_LABEL: "true"},
    "tolerations": [{"key": RUNNER_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(core: client.CoreV1Api, coordination: client.CoordinationV1Api) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {RUNNER_LABEL: "true", "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
        },
        "spec": {"taints": [TAINT]},
    }
    try:
        core.create_node(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    heartbeat(core, coordination, force_status=True)


def heartbeat(core: client.CoreV1Api, coordination: client.CoordinationV1Api, force_status: bool = False) -> None:
    now_micro = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": now_micro},
    }
    try:
        coordination.patch_namespaced_lease(NODE_NAME, "kube-node-lease", {"spec": lease["spec"]})
    except ApiException as exc:
        if exc.status != 404:
            raise
        coordination.create_namespaced_lease("kube-node-lease", lease)
    if not force_status:
        return
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "2", "ephemeral-storage": "100Gi"}
    status = {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "pod runner is posting ready status",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.36.0",
                "containerRuntimeVersion": "process://runner",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
    }
    core.patch_node_status(NODE_NAME, status)
