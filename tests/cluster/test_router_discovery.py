"""The router's Kubernetes discovery follows ImageModels and EndpointSlices in a real API server.

No operator runs here: the test creates the ImageModel, its Service and EndpointSlices itself, as the
operator and the EndpointSlice controller would, and watches the router's routing table follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubediffusion.api.errors import NotFoundError
from kubediffusion.router.app import create_app
from kubediffusion.router.kube_discovery import GROUP, PLURAL, VERSION, KubernetesDiscovery
from kubediffusion.router.settings import RouterSettings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "imagemodel.yaml"


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
def discovery(api_client: client.ApiClient, namespace: str, imagemodel_crd: None) -> Iterator[KubernetesDiscovery]:
    watcher = KubernetesDiscovery(api_client, namespace=namespace, watch_timeout_seconds=5)
    asyncio.run(watcher.start())
    try:
        wait_for(lambda: watcher.synced, timeout=30, interval=0.1, message="discovery synced")
        yield watcher
    finally:
        asyncio.run(watcher.stop())


def imagemodel(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ImageModel",
        "metadata": {"name": name},
        "spec": {"source": {"tiny": {}}, **spec},
    }


def service(name: str) -> dict[str, Any]:
    # No selector: the EndpointSlice controller leaves this Service's slices to us.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": 8000}]},
    }


def endpoint_slice(name: str, service_name: str, addresses: dict[str, bool]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "kubediffusion-tests",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in addresses.items()],
    }


def endpoints_of(watcher: KubernetesDiscovery, model: str) -> tuple[str, ...] | None:
    try:
        return watcher.table().resolve(model).endpoints
    except NotFoundError:
        return None


def test_discovery_follows_imagemodels_and_endpointslices(
    api_client: client.ApiClient, namespace: str, discovery: KubernetesDiscovery
) -> None:
    custom = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    slices = client.DiscoveryV1Api(api_client)
    assert len(discovery.table()) == 0

    # add: the model appears with its aliases; no slice yet -> known but no endpoints
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, imagemodel("tiny", aliases=["dall-e-2"], default=True)
    )
    wait_for(lambda: endpoints_of(discovery, "dall-e-2") == (), timeout=20, interval=0.1, message="model added")
    assert discovery.table().resolve(None).name == "tiny"

    core.create_namespaced_service(namespace, service("im-tiny"))
    slices.create_namespaced_endpoint_slice(
        namespace, endpoint_slice("im-tiny-a", "im-tiny", {"10.20.0.5": True, "10.20.0.6": False})
    )
    slices.create_namespaced_endpoint_slice(namespace, endpoint_slice("im-tiny-b", "im-tiny", {"10.20.0.7": True}))
    # a slice of some other Service is ignored
    slices.create_namespaced_endpoint_slice(namespace, endpoint_slice("other", "im-other", {"10.20.0.9": True}))
    wait_for(
        lambda: endpoints_of(discovery, "tiny") == ("http://10.20.0.5:8000", "http://10.20.0.7:8000"),
        timeout=20,
        interval=0.1,
        message="ready endpoints of both slices",
    )

    # a pod turns ready, another goes away
    slices.patch_namespaced_endpoint_slice(
        "im-tiny-a", namespace, endpoint_slice("im-tiny-a", "im-tiny", {"10.20.0.6": True})
    )
    slices.delete_namespaced_endpoint_slice("im-tiny-b", namespace)
    wait_for(
        lambda: endpoints_of(discovery, "tiny") == ("http://10.20.0.6:8000",),
        timeout=20,
        interval=0.1,
        message="endpoints updated",
    )

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
        lambda: endpoints_of(discovery, "other") == ("http://10.20.0.9:8000",),
        timeout=20,
        interval=0.1,
        message="second model with its pre-existing slice",
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
    wait_for(
        lambda: endpoints_of(discovery, "tiny") is None and endpoints_of(discovery, "sd") is None,
        timeout=20,
        interval=0.1,
        message="model deleted",
    )
    assert [m.name for m in discovery.table().models] == ["other"]


async def test_router_lists_models_discovered_from_the_cluster(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: None, tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, imagemodel("listed", aliases=["dall-e-2"])
    )
    watcher = KubernetesDiscovery(api_client, namespace=namespace, watch_timeout_seconds=5)
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
