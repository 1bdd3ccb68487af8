"""What the operator will not do for a model, against a real API server: read Secrets, run images outside its
allow-list, download outside its policy (docs/security.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import (
    OperatorProcess,
    condition,
    create_model,
    get_model,
    list_objects,
    patch_model_spec,
    raw,
    wait_phase,
)
from tests.support.fixtures import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

TINY: dict[str, Any] = {"source": {"tiny": {}}, "resources": {"gpus": 0}, "cache": {"size": "1Gi"}}
NOWHERE = {"gpus": 0, "nodeSelector": {"kubediffusion.io/test": "nowhere"}}  # no fake kubelet runs these pods
STRICT = {
    "KD_OPERATOR_ALLOWED_IMAGES": "registry.example/approved/",
    "KD_OPERATOR_DOWNLOAD_ALLOW_HTTP": "true",
    "KD_OPERATOR_DOWNLOAD_ALLOWED_NETWORKS": "10.20.0.0/16",
    "KD_OPERATOR_DOWNLOAD_ALLOWED_HOSTS": "*.models.example",
}


@pytest.fixture
def strict_operator(
    control_plane: Cluster, imagemodel_crd: str, cache_storage: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator with an image allow-list and a widened download policy, watching this test's namespace."""
    env = {"KD_OPERATOR_NAMESPACE": namespace, **STRICT}
    proc = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def _kids(api: client.ApiClient, ns: str, name: str) -> dict[str, list[dict[str, Any]]]:
    sel = f"kubediffusion.io/model={name}"
    return {
        "pvc": list_objects(api, f"/api/v1/namespaces/{ns}/persistentvolumeclaims", sel),
        "job": list_objects(api, f"/apis/batch/v1/namespaces/{ns}/jobs", sel),
        "deployment": list_objects(api, f"/apis/apps/v1/namespaces/{ns}/deployments", sel),
        "service": list_objects(api, f"/api/v1/namespaces/{ns}/services", sel),
    }


def _cache_pod(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    pods = wait_for(
        lambda: list_objects(api, f"/api/v1/namespaces/{ns}/pods", f"job-name=im-{name}-cache"),
        timeout=30,
        message="cache Job pod",
    )
    pod: dict[str, Any] = pods[0]
    return pod


def _as_kubelet(api: client.ApiClient, ns: str, pod: dict[str, Any], status: dict[str, Any]) -> None:
    """Bind the pod to a kwok node told to leave its status alone, and report ``status`` as its kubelet."""
    name = pod["metadata"]["name"]
    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    if not pod["spec"].get("nodeName"):
        annotate = {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}}
        code, answer = raw(api, "PATCH", path, annotate, content_type="application/merge-patch+json")
        assert code == 200, answer
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "cpu-node-0"}}  # fmt: skip
        code, answer = raw(api, "POST", f"{path}/binding", binding)
        assert code == 201, answer
        pod["spec"]["nodeName"] = "cpu-node-0"
    body = {"status": {**status, "conditions": [{"type": "PodScheduled", "status": "True"}]}}
    code, answer = raw(api, "PATCH", f"{path}/status", body, content_type="application/merge-patch+json")
    assert code == 200, answer


def _fetch_status(state: dict[str, Any], phase: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "containerStatuses": [{"name": "fetch", "image": "kubediffusion/inference:test", "imageID": "",
                               "ready": False, "restartCount": 0, "started": False, "state": state}],
    }  # fmt: skip


def test_a_token_secret_the_kubelet_cannot_find_is_secret_not_found_until_it_exists(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The operator cannot read Secrets (test_chart_rbac.py): it makes the Job with a secretKeyRef, and the
    # kubelet says whether the Secret is there. Here we are that kubelet.
    spec = {
        "source": {"huggingface": {"repo": "org/gated", "tokenSecretRef": {"name": "hf-token"}}},
        "resources": NOWHERE,
        "cache": {"size": "1Gi"},
    }
    create_model(api_client, namespace, "gated", spec)
    pod = _cache_pod(api_client, namespace, "gated")
    env = pod["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    missing = 'secret "hf-token" not found'
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": missing}}
    _as_kubelet(api_client, namespace, pod, _fetch_status(waiting, "Pending"))

    model = wait_phase(api_client, namespace, "gated", "Failed", CacheReady="SecretNotFound", Degraded="SecretNotFound")
    assert missing in condition(model, "CacheReady")["message"]
    assert model["status"]["lastFailure"]["reason"] == "SecretNotFound"
    assert _kids(api_client, namespace, "gated")["deployment"][0]["spec"]["replicas"] == 0, "no pods without a cache"
    wait_for(
        lambda: ("Warning", "SecretNotFound") in _events(api_client, namespace, "gated"),
        timeout=20,
        message="SecretNotFound event",
    )

    # Someone creates the Secret; the kubelet starts the container, and fetch-model succeeds. No edit of the
    # model, and the operator never looks at the Secret.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"}, "stringData": {"token": "x"}}
    assert raw(api_client, "POST", f"/api/v1/namespaces/{namespace}/secrets", secret)[0] == 201
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = {"source": "hf:org/gated@main", "revision": "abc123", "bytes": 7, "completedAt": now}
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(summary),
                           "startedAt": now, "finishedAt": now}}  # fmt: skip
    _as_kubelet(api_client, namespace, pod, _fetch_status(done, "Succeeded"))

    def healed() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "gated") or {}
        cache = condition(model, "CacheReady")
        return model if cache.get("status") == "True" and cache.get("reason") == "Downloaded" else None

    model = wait_for(healed, timeout=60, interval=0.3, message="the cache Job ran once the Secret existed")
    assert model["status"]["cache"]["revision"] == "abc123"
    assert "SecretNotFound" not in {c["reason"] for c in model["status"]["conditions"]}


def _events(api: client.ApiClient, ns: str, name: str) -> list[tuple[str, str]]:
    return [
        (e["type"], e["reason"])
        for e in list_objects(api, f"/api/v1/namespaces/{ns}/events")
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "ImageModel"
    ]


def test_an_image_outside_the_allow_list_is_refused_and_changes_nothing(
    api_client: client.ApiClient, namespace: str, strict_operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "approved", {**TINY, "image": "registry.example/approved/inference:1"})
    create_model(api_client, namespace, "rogue", {**TINY, "image": "registry.example/approved-not/miner:1"})
    create_model(api_client, namespace, "default", TINY)  # the operator's own inference image always runs

    model = wait_phase(api_client, namespace, "rogue", "Failed", CacheReady="ImageNotAllowed")
    message = condition(model, "CacheReady")["message"]
    assert "registry.example/approved-not/miner:1" in message and "registry.example/approved/" in message
    assert _kids(api_client, namespace, "rogue") == {"pvc": [], "job": [], "deployment": [], "service": []}
    wait_phase(api_client, namespace, "default", "Ready")
    wait_phase(api_client, namespace, "approved", "Ready")
    deployment = _kids(api_client, namespace, "approved")["deployment"][0]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/approved/inference:1"

    # A serving model switched to a refused image: refused, its children untouched, its pods still serving.
    patch_model_spec(api_client, namespace, "approved", {"image": "docker.io/library/miner:1"})
    model = wait_phase(api_client, namespace, "approved", "Failed", timeout=60, CacheReady="ImageNotAllowed")
    assert model["status"]["ready"] == "1/1" and condition(model, "Available")["status"] == "True"
    kept = _kids(api_client, namespace, "approved")["deployment"][0]
    assert kept["spec"]["template"] == deployment["spec"]["template"]


def test_the_download_policy_reaches_fetch_model_and_refuses_what_it_can_see(
    api_client: client.ApiClient, namespace: str, strict_operator: OperatorProcess
) -> None:
    mirrored = {
        "source": {"url": "http://mirror.models.example/sd.tar.gz"},
        "resources": NOWHERE,
        "cache": {"size": "3Gi"},
    }
    create_model(api_client, namespace, "mirrored", mirrored)
    create_model(api_client, namespace, "elsewhere", {**TINY, "source": {"url": "https://elsewhere.example/sd.zip"}})

    model = wait_phase(api_client, namespace, "elsewhere", "Failed", CacheReady="DownloadRefused")
    assert "'elsewhere.example' is not an allowed host" in condition(model, "CacheReady")["message"]
    assert _kids(api_client, namespace, "elsewhere")["job"] == []

    job = wait_for(lambda: _kids(api_client, namespace, "mirrored")["job"], timeout=30, message="cache Job")[0]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[4:] == [
        "--prune", "--url", "http://mirror.models.example/sd.tar.gz", "--allow-http", "--allow-network",
        "10.20.0.0/16", "--allow-host", "*.models.example", "--max-bytes", "3Gi",
    ]  # fmt: skip
