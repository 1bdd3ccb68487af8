"""Usage counts and quotas shared by router replicas through one ConfigMap, against a real API server,
with nothing but the RBAC the chart gives the router for it: get and update on that one ConfigMap
(resourceNames), which the chart creates without data.

Two replicas are two ledgers (and two router apps) on two API clients that authenticate as that
ServiceAccount: their admissions of a tenant's images are compare-and-swap writes of the ConfigMap
(resourceVersion preconditions), so together they never admit more than the quota, whatever the
interleaving; refunds and successes arrive with the next flush and are seen by the other replica.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from kubediffusion.api.errors import ServiceUnavailableError
from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.kube_ledger import ConfigMapDocument
from kubediffusion.router.ledger import SharedLedger
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.usagebook import Counts, UsageBook, utc_day
from tests.cluster.test_router_wake import router_client, service_account_kubeconfig
from tests.support.fixtures import Cluster

pytestmark = pytest.mark.cluster

CONFIGMAP = "kd-router-usage"
# The chart's Role rows for it (besides the router's others, which this test does not need).
USAGE_RULES = [
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CONFIGMAP], "verbs": ["get", "update"]}
]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def chart_configmap(api: client.ApiClient, namespace: str) -> None:
    """What the chart renders: the ConfigMap, labelled and annotated, without data."""
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace,
        {"metadata": {"name": CONFIGMAP, "labels": {"app.kubernetes.io/name": "kubediffusion"},
                      "annotations": {"helm.sh/resource-policy": "keep"}}},
    )  # fmt: skip


def ledger(config: dict[str, Any], namespace: str) -> SharedLedger:
    document = ConfigMapDocument(router_client(config, namespace), CONFIGMAP, namespace, owns_client=True)
    return SharedLedger(document, clock=time.time, flush_seconds=3600)


def stored(api: client.ApiClient, namespace: str) -> UsageBook:
    return UsageBook.from_data(client.CoreV1Api(api).read_namespaced_config_map(CONFIGMAP, namespace).data)


async def test_two_replicas_never_admit_more_than_the_quota_together(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str
) -> None:
    chart_configmap(api_client, namespace)
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, USAGE_RULES)
    one, two = ledger(config, namespace), ledger(config, namespace)
    day = utc_day(time.time())
    try:
        admitted = await asyncio.gather(*(r.admit(day, "team-a", "tiny", 1, 5) for r in (one, two) for _ in range(6)))
        assert sum(admitted) == 5
        assert stored(api_client, namespace).images(day, "team-a") == 5
        one.record(day, "team-a", "tiny", Counts(images=-2, failed_requests=2))  # two failed: refunded
        two.record(day, "team-a", "tiny", Counts(requests=3, megapixels=0.75, denoising_steps=12))
        await asyncio.gather(one.flush(), two.flush())
        book = stored(api_client, namespace)
        counts = next(c for d, t, m, c in book.rows() if (d, t, m) == (day, "team-a", "tiny"))
        assert (counts.images, counts.failed_requests, counts.requests, counts.denoising_steps) == (3, 2, 3, 12)
        assert [await two.admit(day, "team-a", "tiny", 1, 5) for _ in range(3)] == [True, True, False]
    finally:
        await asyncio.gather(one.stop(), two.stop())
    meta = client.CoreV1Api(api_client).read_namespaced_config_map(CONFIGMAP, namespace).metadata
    assert meta.annotations == {"helm.sh/resource-policy": "keep"}  # the chart's metadata kept
    assert meta.labels == {"app.kubernetes.io/name": "kubediffusion"}


async def test_without_its_configmap_and_rights_to_create_it_quotas_fail_closed(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str
) -> None:
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, USAGE_RULES)
    refused = ledger(config, namespace)
    day = utc_day(time.time())
    try:
        with pytest.raises(ServiceUnavailableError) as info:
            await refused.admit(day, "team-a", "tiny", 1, 5)
        assert info.value.code == "quota_unavailable"
        assert await refused.admit(day, "team-b", "tiny", 1, None)  # no quota: served, counted in memory
    finally:
        await refused.stop()  # its flush fails (logged), the router stops anyway


async def test_a_router_allowed_to_create_the_configmap_creates_it(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str
) -> None:
    rules = [*USAGE_RULES, {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, rules)
    creating = ledger(config, namespace)
    day = utc_day(time.time())
    try:
        assert await creating.admit(day, "team-a", "tiny", 2, 5)
    finally:
        await creating.stop()
    assert stored(api_client, namespace).images(day, "team-a") == 2


async def test_two_router_apps_answer_usage_for_the_whole_cluster(
    api_client: client.ApiClient, control_plane: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart_configmap(api_client, namespace)
    config = service_account_kubeconfig(api_client, control_plane.kubeconfig, namespace, USAGE_RULES)
    kubeconfig = tmp_path / "router.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "tenants:\n"
        "  - {name: team-a, keys: [sk-a], quota: {imagesPerDay: 2}}\n"
        "  - {name: ops, keys: [sk-ops], admin: true}\n"
    )

    def pod(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": PNG}]})

    table = RoutingTable([ModelEntry(name="tiny", endpoints=("http://127.0.9.1:8000",))])
    apps = [
        create_app(
            RouterSettings(
                discovery="static", storage_dir=tmp_path / f"images-{index}", signing_key="k" * 32,
                tenants_file=tenants, kubeconfig=kubeconfig, usage_configmap=CONFIGMAP, usage_namespace=namespace,
            ),
            discovery=StaticDiscovery(table=table),
            transport=httpx.MockTransport(pod),
        )
        for index in range(2)
    ]  # fmt: skip
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://one") as one,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://two") as two,
    ):
        key = {"Authorization": "Bearer sk-a"}
        first = await one.post("/v1/images/generations", json={"prompt": "x"}, headers=key)
        second = await two.post("/v1/images/generations", json={"prompt": "x"}, headers=key)
        third = await one.post("/v1/images/generations", json={"prompt": "x"}, headers=key)
        usage = (await two.get("/v1/usage", headers={"Authorization": "Bearer sk-ops"})).json()
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert third.json()["error"]["code"] == "insufficient_quota"
    assert usage["scope"] == "cluster" and usage["totals"][0]["images"] == 2
    book = stored(api_client, namespace)  # both apps flushed their successes when they stopped
    assert [c.requests for *_, c in book.rows("team-a")] == [2]
