"""The local control plane behaves like a cluster: scheduling onto fake GPU nodes with pod IPs in
127.0.0.0/8, garbage collection, CRDs, Jobs completing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import default_pod_cidr
from tests.support.nodes import CPU_NODE_NAMES, GPU_NODE_NAMES, GPU_RESOURCE
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

DATA = Path(__file__).parent / "data"
POD_NETWORK = ipaddress.ip_network(default_pod_cidr())  # 127.10.0.0/16 unless overridden
FAKE_IMAGE = "registry.invalid/kubediffusion/fake:0"  # never pulled: kwok fakes the kubelet


def deployment(name: str, labels: dict[str, str], container: dict[str, object]) -> dict[str, object]:
    """A two-replica Deployment of one container."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def test_server_reports_pinned_version(api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.major == "1"
    assert info.git_version.startswith(f"v1.{info.minor.rstrip('+')}.")


def test_gpu_deployment_lands_on_gpu_nodes_with_local_pod_ips(api_client: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    labels = {"app": "gpu-workload"}
    container = {"name": "main", "image": FAKE_IMAGE, "resources": {"limits": {GPU_RESOURCE: "1"}}}
    apps.create_namespaced_deployment(namespace, deployment("gpu-workload", labels, container))

    def ready() -> bool:
        d = apps.read_namespaced_deployment_status("gpu-workload", namespace)
        return (d.status.ready_replicas or 0) == 2

    wait_for(ready, timeout=90, interval=0.5, message="deployment gpu-workload 2/2 ready")

    pods = core.list_namespaced_pod(namespace, label_selector="app=gpu-workload").items
    running = [p for p in pods if p.metadata.deletion_timestamp is None]
    assert len(running) == 2
    gpu_nodes = set(GPU_NODE_NAMES)
    cpu_nodes = set(CPU_NODE_NAMES)
    for pod in running:
        assert pod.spec.node_name in gpu_nodes, pod.spec.node_name
        assert pod.spec.node_name not in cpu_nodes
        assert pod.status.phase == "Running"
        assert pod.status.pod_ip, f"{pod.metadata.name} has no pod IP"
        ips = [pod.status.pod_ip] + [p.ip for p in pod.status.pod_ips or []]
        for ip in ips:
            assert ipaddress.ip_address(ip) in POD_NETWORK, ip
    assert len({p.status.pod_ip for p in running}) == 2, "pod IPs must be distinct"


def test_deleting_owner_garbage_collects_dependent(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
            "data": {"b": "2"},
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_for(child_gone, timeout=60, interval=0.5, message="garbage collection of ConfigMap child")


def test_crd_from_yaml_is_served(api_client: client.ApiClient, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load((DATA / "widget-crd.yaml").read_text())
    name = crd["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as e:
        if e.status != 409:
            raise

    def established() -> bool:
        conds = ext.read_custom_resource_definition_status(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(established, timeout=30, interval=0.2, message=f"CRD {name} Established")

    custom = client.CustomObjectsApi(api_client)
    group, version, plural = "test.kubediffusion.io", "v1", "widgets"
    # Established can precede the discovery/handler being ready for a moment: retry the create.
    wait_for(
        lambda: custom.create_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            {"apiVersion": f"{group}/{version}", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}},
        ),
        timeout=30,
        interval=0.5,
        message="create Widget w1",
    )
    got = custom.get_namespaced_custom_object(group, version, namespace, plural, "w1")
    assert got["spec"] == {"size": 3, "color": "blue"}  # structural schema default applied

    with pytest.raises(ApiException) as bad:
        custom.create_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            {"apiVersion": f"{group}/{version}", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 0}},
        )
    assert bad.value.status == 422


def test_job_pods_complete(api_client: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": FAKE_IMAGE}],
                    }
                },
            },
        },
    )

    def complete() -> bool:
        job = batch.read_namespaced_job_status("once", namespace)
        conds = job.status.conditions or []
        if any(c.type == "Failed" and c.status == "True" for c in conds):
            raise AssertionError(f"job failed: {conds}")
        return any(c.type == "Complete" and c.status == "True" for c in conds)

    wait_for(complete, timeout=90, interval=0.5, message="job once Complete")


def test_service_gets_endpointslices_for_ready_pods(api_client: client.ApiClient, namespace: str) -> None:
    if POD_NETWORK.is_loopback:
        pytest.skip(
            "Kubernetes rejects loopback IPs in EndpointSlices; run with KUBEDIFFUSION_TEST_POD_CIDR set to "
            "a host-local non-loopback range (see tests/support/controlplane.py) to exercise Services"
        )
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    labels = {"app": "web"}
    container = {"name": "main", "image": FAKE_IMAGE, "ports": [{"containerPort": 8000}]}
    apps.create_namespaced_deployment(namespace, deployment("web", labels, container))
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "web"}, "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8000}]}},
    )

    def ready_addresses() -> set[str] | None:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=web"
        ).items
        addrs = {
            a for s in slices for e in s.endpoints or [] if e.conditions and e.conditions.ready for a in e.addresses
        }
        return addrs if len(addrs) == 2 else None

    addrs = wait_for(ready_addresses, timeout=60, interval=0.5, message="2 ready endpoints for Service web")
    assert all(ipaddress.ip_address(a) in POD_NETWORK for a in addrs), addrs
