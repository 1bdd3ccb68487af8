"""The router's Kubernetes discovery follows ImageModels and inference Pods in a real API server.

No operator and no kubelet act here: the test creates the ImageModel and the Pods itself, as the
operator's Deployment would, and writes the pods' status (podIP, Ready) through the status
subresource, as a kubelet would; then watches the router's routing table follow.

The pods are bound to a kwok node (healthy, so neither the pod GC nor the node lifecycle controller
touches them) and carry ``kwok.x-k8s.io/status: custom``: kwok leaves their status to us
(tests/support/controlplane.py starts it with ``--disregard-status-with-annotation-selector``).
No kubelet also means a deleted pod stays Terminating until it is force-deleted: the test sees
that state too.

The discovery talks to the API server through its own lightkube client, made from the control
plane's kubeconfig (as the router makes it from KD_ROUTER_KUBECONFIG); the tests create and change
objects with the kubernetes client. Its watch loops are asyncio tasks: the synchronous test runs
them on an event loop in a thread of its own and polls the table they keep.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from lightkube import AsyncClient, KubeConfig

from kubediffusion.api.errors import NotFoundError
from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION
from kubediffusion.router.app import create_app
from kubediffusion.router.kube_discovery import KubernetesDiscovery, is_gone
from kubediffusion.router.settings import RouterSettings
from tests.support.fixtures import Cluster
from tests.support.nodes import CPU_NODE_NAMES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "imagemodel.yaml"

T = TypeVar("T")


class LoopThread:
    """An event loop running in a thread: coroutines go in with :meth:`run`, the test stays synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="discovery-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def lightkube_client(control_plane: Cluster) -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_file(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def imagemodel_crd(api_client: client.ApiClient) -> None:
    """The ImageModel CRD, applied unless the cluster already has it."""
    ext = client.ApiextensionsV1Api(api_client)
    crd = yaml.safe_load(CRD_PATH.read_text())
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        conditions = ext.read_custom_resource_definition_status(crd["metadata"]["name"]).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, interval=0.2, message="ImageModel CRD Established")
    custom = client.CustomObjectsApi(api_client)
    wait_for(
        lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None,
        timeout=30,
        interval=0.2,
        message="ImageModel API served",
    )


@pytest.fixture
def discovery(control_plane: Cluster, namespace: str, imagemodel_crd: None) -> Iterator[KubernetesDiscovery]:
    loop = LoopThread()

    async def started() -> KubernetesDiscovery:
        watcher = KubernetesDiscovery(
            lightkube_client(control_plane), namespace=namespace, watch_timeout_seconds=5, owns_client=True
        )
        await watcher.start()
        return watcher

    watcher = loop.run(started())
    try:
        wait_for(lambda: watcher.synced, timeout=30, interval=0.1, message="discovery synced")
        yield watcher
    finally:
        loop.run(watcher.stop())
        loop.close()


@pytest.fixture
def pods_force_deleted(api_client: client.ApiClient, namespace: str) -> Iterator[None]:
    """No kubelet finishes graceful deletions here: force-delete the pods, so the namespace can go."""
    yield
    client.CoreV1Api(api_client).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def imagemodel(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageModel",
        "metadata": {"name": name},
        "spec": {"source": {"tiny": {}}, **spec},
    }


NODE = CPU_NODE_NAMES[0]


def pod(name: str, model: str, component: str = "inference") -> dict[str, Any]:
    """An inference pod as the operator's Deployment makes them (labels, port ``http``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": names.labels(model, component),
            "annotations": {"kwok.x-k8s.io/status": "custom"},  # kwok: hands off its status
        },
        "spec": {
            "nodeName": NODE,
            "containers": [
                {
                    "name": "inference",
                    "image": "kubediffusion/inference:test",
                    "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT}],
                }
            ],
        },
    }


def set_status(core: client.CoreV1Api, namespace: str, name: str, ip: str, ready: bool) -> None:
    """What the kubelet would report: Running, its IP, Ready or not."""
    body = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        }
    }
    core.patch_namespaced_pod_status(name, namespace, body)


def start_pod(core: client.CoreV1Api, namespace: str, name: str, model: str, ip: str, *, ready: bool) -> None:
    core.create_namespaced_pod(namespace, pod(name, model))
    set_status(core, namespace, name, ip, ready)


def endpoints_of(watcher: KubernetesDiscovery, model: str) -> tuple[str, ...] | None:
    try:
        return watcher.table().resolve(model).endpoints
    except NotFoundError:
        return None


def test_discovery_follows_imagemodels_and_pods(
    api_client: client.ApiClient, namespace: str, discovery: KubernetesDiscovery, pods_force_deleted: None
) -> None:
    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    assert len(discovery.table()) == 0

    # add: the model appears with its aliases; no pod yet -> known but no endpoints
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, imagemodel("tiny", aliases=["dall-e-2"], default=True)
    )
    wait_for(lambda: endpoints_of(discovery, "dall-e-2") == (), timeout=20, interval=0.1, message="model added")
    assert discovery.table().resolve(None).name == "tiny"

    # pods: created (no IP, not ready yet), then the "kubelet" reports. Loopback IPs, as our e2e pods
    # have (the API server would refuse them in EndpointSlices; in pod status they are fine).
    core.create_namespaced_pod(namespace, pod("tiny-a", "tiny"))
    wait_for(lambda: discovery._pods.get((namespace, "tiny-a")) == ("tiny", None), timeout=20, interval=0.1)
    assert endpoints_of(discovery, "tiny") == ()  # a pod without an IP is no endpoint
    set_status(core, namespace, "tiny-a", "127.30.0.5", ready=True)
    start_pod(core, namespace, "tiny-b", "tiny", "127.30.0.6", ready=False)
    start_pod(core, namespace, "tiny-c", "tiny", "127.30.0.7", ready=True)
    # ignored: the model's cache Job pod (component cache), and another model's pod
    core.create_namespaced_pod(namespace, pod("tiny-cache", "tiny", component="cache"))
    set_status(core, namespace, "tiny-cache", "127.30.0.8", ready=True)
    start_pod(core, namespace, "other-a", "other", "127.30.0.9", ready=True)
    wait_for(
        lambda: endpoints_of(discovery, "tiny") == ("http://127.30.0.5:8000", "http://127.30.0.7:8000"),
        timeout=20,
        interval=0.1,
        message="ready pods only",
    )
    # the server-side selector left the cache pod out (its events came before other-a's: watch order)
    wait_for(lambda: discovery._pods.get((namespace, "other-a"), ("", None))[1], timeout=20, interval=0.1)
    assert (namespace, "tiny-cache") not in discovery._pods
    # kwok left the status we wrote alone (else it would have put its own IPs there)
    assert core.read_namespaced_pod("tiny-a", namespace).status.pod_ip == "127.30.0.5"

    # one pod turns ready, another unready
    set_status(core, namespace, "tiny-b", "127.30.0.6", ready=True)
    set_status(core, namespace, "tiny-a", "127.30.0.5", ready=False)
    wait_for(
        lambda: endpoints_of(discovery, "tiny") == ("http://127.30.0.6:8000", "http://127.30.0.7:8000"),
        timeout=20,
        interval=0.1,
        message="readiness followed",
    )

    # a deleted pod is Terminating (still Ready: no kubelet here) and gets no new work; then it is gone
    core.delete_namespaced_pod("tiny-c", namespace)
    wait_for(
        lambda: endpoints_of(discovery, "tiny") == ("http://127.30.0.6:8000",),
        timeout=20,
        interval=0.1,
        message="terminating pod dropped",
    )
    terminating = core.read_namespaced_pod("tiny-c", namespace)
    assert terminating.metadata.deletion_timestamp is not None
    assert any(c.type == "Ready" and c.status == "True" for c in terminating.status.conditions)
    core.delete_namespaced_pod("tiny-c", namespace, grace_period_seconds=0)
    wait_for(
        lambda: (namespace, "tiny-c") not in discovery._pods, timeout=20, interval=0.1, message="deleted pod forgotten"
    )
    assert endpoints_of(discovery, "tiny") == ("http://127.30.0.6:8000",)

    # change alias and status
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny", {"spec": {"aliases": ["sd"]}})
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "tiny", {"status": {"readyReplicas": 1, "replicas": 1}}
    )
    wait_for(
        lambda: endpoints_of(discovery, "sd") is not None and endpoints_of(discovery, "dall-e-2") is None,
        timeout=20,
        interval=0.1,
        message="alias changed",
    )
    wait_for(
        lambda: discovery.table().resolve("tiny").ready_replicas == 1,
        timeout=20,
        interval=0.1,
        message="status.readyReplicas followed",
    )

    # a second model, then delete the first
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, imagemodel("other"))
    wait_for(
        lambda: endpoints_of(discovery, "other") == ("http://127.30.0.9:8000",),
        timeout=20,
        interval=0.1,
        message="second model with its pre-existing pod",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
    wait_for(
        lambda: endpoints_of(discovery, "tiny") is None and endpoints_of(discovery, "sd") is None,
        timeout=20,
        interval=0.1,
        message="model deleted",
    )
    assert [m.name for m in discovery.table().models] == ["other"]


def test_a_watch_from_a_version_the_api_server_no_longer_has_is_gone(
    control_plane: Cluster, namespace: str, imagemodel_crd: None
) -> None:
    """What makes the loop relist at once (no backoff): the real server's 410, recognised as such.
    ImageModels: their watch cache starts when the CRD is established, long after resourceVersion 1
    (the pods' cache may start so early that it still serves from 1)."""
    loop = LoopThread()
    watcher = KubernetesDiscovery(lightkube_client(control_plane), namespace=namespace, owns_client=True)
    try:
        with pytest.raises(Exception) as info:
            loop.run(watcher._watch("models", "1"))
        assert is_gone(info.value), repr(info.value)
    finally:
        loop.run(watcher.stop())
        loop.close()


def crd_declares(field: str) -> bool:
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return field in spec.get("properties", {})


@pytest.mark.skipif(not crd_declares("adapters"), reason="the ImageModel CRD does not declare spec.adapters yet")
def test_discovery_reads_an_imagemodels_adapters(
    api_client: client.ApiClient, namespace: str, discovery: KubernetesDiscovery
) -> None:
    adapter = {"name": "style-a", "source": {"url": "https://example.com/style-a.tar.gz"}, "defaultScale": 0.7}
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, imagemodel("styled", aliases=["dall-e-2"], adapters=[adapter])
    )
    wait_for(lambda: endpoints_of(discovery, "styled") == (), timeout=20, interval=0.1, message="model added")
    target = discovery.table().target("dall-e-2:style-a")
    assert target.served_name == "styled:style-a" and target.entry.adapters == {"style-a": 0.7}
    with pytest.raises(NotFoundError):
        discovery.table().target("styled:nope")


async def test_router_lists_models_discovered_from_the_cluster(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str, imagemodel_crd: None, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, imagemodel("listed", aliases=["dall-e-2"])
    )
    watcher = KubernetesDiscovery(
        lightkube_client(control_plane), namespace=namespace, watch_timeout_seconds=5, owns_client=True
    )
    settings = RouterSettings(storage_dir=tmp_path, signing_key="k" * 32)
    app = create_app(settings, discovery=watcher)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as http,
    ):
        for _ in range(100):
            if (await http.get("/readyz")).status_code == 200 and len(watcher.table()) == 1:
                break
            await asyncio.sleep(0.1)
        listing = (await http.get("/v1/models")).json()
        unready = await http.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-2"})
        bad = await http.post("/v1/images/generations", json={"prompt": "x", "size": "1024x1024"})
    assert [m["id"] for m in listing["data"]] == ["listed"]
    assert listing["data"][0]["aliases"] == ["dall-e-2"] and listing["data"][0]["limits"]["maxSize"] == 256
    assert unready.status_code == 503 and "retry-after" in unready.headers  # no ready pod
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "size"  # tiny limits, before any pod
