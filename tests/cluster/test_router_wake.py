"""Scale from zero against a real API server: the router, with nothing but the RBAC the chart gives its
ServiceAccount, holds requests for a model at zero, asks for one replica through the ImageModel's scale
subresource (once), and sends the held requests to the first pod that becomes ready.

No operator or kubelet acts here: the test plays them (it creates the model's pod and reports it Ready,
as in test_router_discovery.py); the pods themselves are an ``httpx.MockTransport``. The router runs
in-process with Kubernetes discovery and its default scaler, both on a client that authenticates as a
ServiceAccount bound to a Role made of test_chart_rbac.ROUTER_ALLOWED, the rows the chart's router Role is
checked against.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from lightkube import AsyncClient, KubeConfig
from prometheus_client.parser import text_string_to_metric_families

from kubediffusion.router.app import create_app
from kubediffusion.router.kube_discovery import KubernetesDiscovery
from kubediffusion.router.kube_scaler import KubeScaler
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.wakeup import WakeError
from tests.cluster.operator_fixture import create_model, get_model, raw
from tests.cluster.test_chart_rbac import ROUTER_ALLOWED
from tests.cluster.test_router_discovery import start_pod
from tests.support.fixtures import Cluster

pytestmark = pytest.mark.cluster

AUTOSCALED = {"source": {"tiny": {}}, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def router_rules(*, without: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The chart's router Role as rules (optionally less one verb on one resource)."""
    return [
        {"apiGroups": [row.group], "resources": [row.resource], "verbs": [row.verb]}
        for row in ROUTER_ALLOWED
        if (row.verb, row.resource) != without
    ]


def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    """A kubeconfig for a new ServiceAccount ``router`` bound to ``rules`` in ``namespace``."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "router"}})
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "router"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "router"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "router"},
            "subjects": [{"kind": "ServiceAccount", "name": "router", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token("router", namespace, {"spec": {"expirationSeconds": 900}})
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token.status.token}}]
    result: dict[str, Any] = config
    return result


def router_client(config: dict[str, Any], namespace: str) -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_dict(config), namespace=namespace)


def spec_replicas(api: client.ApiClient, namespace: str, name: str) -> int | None:
    replicas = ((get_model(api, namespace, name) or {}).get("spec") or {}).get("replicas")
    return replicas if isinstance(replicas, int) else None


async def until(predicate: Callable[[], bool], within: float = 30.0, message: str = "condition") -> None:
    """Poll without blocking the event loop the router runs on."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.1)


def sample(metrics: str, name: str, namespace: str, **labels: str) -> float | None:
    """A sample of model "elastic" from a /metrics page."""
    wanted = {"model": "elastic", "namespace": namespace, **labels}
    found = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
             if s.name == name and s.labels == wanted]  # fmt: skip
    return found[0] if found else None


@pytest.fixture
def pods_force_deleted(api_client: client.ApiClient, namespace: str) -> Iterator[None]:
    yield
    client.CoreV1Api(api_client).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


class Pods:
    """The model's pods, as an httpx transport: every request answered with one image, and recorded."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": PNG}]})


@asynccontextmanager
async def router_app(
    config: dict[str, Any], namespace: str, pods: Pods, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    discovery = KubernetesDiscovery(
        router_client(config, namespace), namespace=namespace, watch_timeout_seconds=5, owns_client=True
    )
    values: dict[str, Any] = {"storage_dir": tmp_path, "signing_key": "k" * 32, "global_rate_limit_rps": 0}
    app = create_app(
        RouterSettings(**{**values, **settings}), discovery=discovery, transport=httpx.MockTransport(pods.handler)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as http,
    ):
        await until(lambda: discovery.synced and len(discovery.table()) > 0, message="discovery synced")
        yield http, app.state.router


async def test_held_requests_wake_the_model_once_and_go_to_its_first_ready_pod(
    api_client: client.ApiClient,
    control_plane: Cluster,
    namespace: str,
    imagemodel_crd: str,
    pods_force_deleted: None,
    tmp_path: Path,
) -> None:
    create_model(api_client, namespace, "elastic", AUTOSCALED)  # no spec.replicas: at minReplicas, 0
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, router_rules())
    pods = Pods()
    async with router_app(config, namespace, pods, tmp_path) as (http, state):
        calls = []
        for index in range(3):
            request = http.post("/v1/images/generations", json={"prompt": f"p{index}", "model": "elastic"})
            calls.append(asyncio.create_task(request))
            await until(lambda: state.holds.held(namespace, "elastic") == index + 1, message=f"{index} held")  # noqa: B023
        await until(lambda: spec_replicas(api_client, namespace, "elastic") == 1, message="woken through /scale")
        # The router's view catches up (spec.replicas 1, still no pod): the requests keep waiting, no 503.
        await until(lambda: state.discovery.table().find(namespace, "elastic").desired_replicas == 1)
        assert not any(call.done() for call in calls) and pods.requests == []
        start_pod(client.CoreV1Api(api_client), namespace, "elastic-a", "elastic", "127.31.0.5", ready=True)
        answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
        metrics = (await http.get("/metrics")).text
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [json.loads(r.content)["prompt"] for r in pods.requests] == ["p0", "p1", "p2"]
    assert {str(r.url) for r in pods.requests} == {"http://127.31.0.5:8000/v1/images/generations"}
    assert sample(metrics, "kubediffusion_router_wakeups_total", namespace, outcome="scaled") == 1
    assert sample(metrics, "kubediffusion_router_held_requests", namespace) == 0


async def test_the_scale_write_never_lowers_replicas_someone_else_raised(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str, imagemodel_crd: str
) -> None:
    create_model(api_client, namespace, "elastic", AUTOSCALED)
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, router_rules())
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/elastic/scale"
    lightkube = router_client(config, namespace)
    try:
        scaler = KubeScaler(lightkube)
        assert await scaler.wake(namespace, "elastic") is True  # no spec.replicas yet: unconditional
        assert spec_replicas(api_client, namespace, "elastic") == 1
        code, answer = raw(
            api_client, "PATCH", path, {"spec": {"replicas": 2}}, content_type="application/merge-patch+json"
        )
        assert code == 200, answer
        version = (get_model(api_client, namespace, "elastic") or {})["metadata"]["resourceVersion"]
        assert await scaler.wake(namespace, "elastic") is False  # it has replicas: nothing is written
        code, answer = raw(
            api_client, "PATCH", path, {"spec": {"replicas": 0}}, content_type="application/merge-patch+json"
        )
        assert code == 200, answer
        assert await scaler.wake(namespace, "elastic") is True  # at zero again: written at the version read
        model = get_model(api_client, namespace, "elastic") or {}
        assert model["spec"]["replicas"] == 1 and model["metadata"]["resourceVersion"] != version
    finally:
        await lightkube.close()


async def test_without_the_right_to_patch_scale_the_wake_up_fails_at_once_and_the_hold_ends_in_503(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str, imagemodel_crd: str, tmp_path: Path
) -> None:
    create_model(api_client, namespace, "elastic", AUTOSCALED)
    rules = router_rules(without=("patch", "imagemodels/scale"))
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, rules)
    lightkube = router_client(config, namespace)
    try:
        with pytest.raises(WakeError) as caught:
            await KubeScaler(lightkube).wake(namespace, "elastic")
        assert caught.value.retryable is False and "403" in str(caught.value)
    finally:
        await lightkube.close()
    pods = Pods()
    async with router_app(config, namespace, pods, tmp_path, hold_timeout_seconds=2, hold_retry_after=7) as (http, _):
        answer = await asyncio.wait_for(http.post("/v1/images/generations", json={"prompt": "x"}), 30)
        metrics = (await http.get("/metrics")).text
    assert answer.status_code == 503 and answer.headers["retry-after"] == "7"
    assert sample(metrics, "kubediffusion_router_wakeups_total", namespace, outcome="failed") == 1
    assert spec_replicas(api_client, namespace, "elastic") is None and pods.requests == []
