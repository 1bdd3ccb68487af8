"""The operator against a real API server + kwok: children, status, failures, rollouts, drift, restarts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubediffusion import __version__
from tests.cluster import operator_fixture
from tests.cluster.operator_fixture import (
    OperatorProcess,
    condition,
    create_model,
    delete_model,
    get_model,
    list_objects,
    patch_model_spec,
    raw,
    table,
    wait_phase,
)
from tests.support.fixtures import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

TINY: dict[str, Any] = {"source": {"tiny": {}}, "resources": {"gpus": 0}, "cache": {"size": "1Gi"}}


def children(api: client.ApiClient, ns: str, name: str) -> dict[str, list[dict[str, Any]]]:
    sel = f"kubediffusion.io/model={name}"
    return {
        "pvc": list_objects(api, f"/api/v1/namespaces/{ns}/persistentvolumeclaims", sel),
        "job": list_objects(api, f"/apis/batch/v1/namespaces/{ns}/jobs", sel),
        "deployment": list_objects(api, f"/apis/apps/v1/namespaces/{ns}/deployments", sel),
        "replicaset": list_objects(api, f"/apis/apps/v1/namespaces/{ns}/replicasets", sel),
        "service": list_objects(api, f"/api/v1/namespaces/{ns}/services", sel),
        "pod": list_objects(api, f"/api/v1/namespaces/{ns}/pods", f"{sel},app.kubernetes.io/component=inference"),
    }


def events(api: client.ApiClient, ns: str, name: str) -> list[tuple[str, str]]:
    items = list_objects(api, f"/api/v1/namespaces/{ns}/events")
    return [
        (e["type"], e["reason"])
        for e in items
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "ImageModel"
    ]


def test_tiny_model_becomes_ready_with_owned_children_and_printer_columns(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The API server's PodSecurity admission refuses pods that break the "restricted" standard.
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    code, answer = raw(
        api_client,
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": labels}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer
    created = create_model(api_client, namespace, "tiny", {**TINY, "cache": {"size": "1Gi", "retainOnDelete": False}})
    model = wait_phase(api_client, namespace, "tiny", "Ready", CacheReady="Downloaded", Ready="Ready")
    status = model["status"]
    assert status["endpoint"] == f"http://im-tiny.{namespace}.svc:8000"
    assert status["ready"] == "1/1" and status["readyReplicas"] == 1
    assert status["observedGeneration"] == 1 and status["smokeTest"] is True
    assert status["cache"]["claimName"] == "im-tiny-cache"
    for type_ in ("CacheReady", "Available", "Ready"):
        assert condition(model, type_)["status"] == "True"
    assert condition(model, "Degraded")["status"] == "False"

    kids = children(api_client, namespace, "tiny")
    assert [o["metadata"]["name"] for o in kids["pvc"]] == ["im-tiny-cache"]
    assert [o["metadata"]["name"] for o in kids["job"]] == ["im-tiny-cache"]
    assert [o["metadata"]["name"] for o in kids["deployment"]] == ["im-tiny"]
    assert [o["metadata"]["name"] for o in kids["service"]] == ["im-tiny"]
    uid = created["metadata"]["uid"]
    for kind in ("pvc", "job", "deployment", "service"):
        refs = kids[kind][0]["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [("ImageModel", uid, True)], kind
    managers = {m["manager"] for m in kids["deployment"][0]["metadata"]["managedFields"]}
    assert "kubediffusion-operator" in managers
    svc = kids["service"][0]["spec"]
    assert svc["ports"][0]["name"] == "http" and svc["ports"][0]["port"] == 8000

    [row] = table(api_client, namespace)
    assert row["Name"] == "tiny" and row["Ready"] == "1/1" and row["Phase"] == "Ready"
    assert row["Source"] == "tiny:sd (smoke test)" and row["Endpoint"] == status["endpoint"]
    assert "Age" in row

    got = wait_for(
        lambda: ("Normal", "Ready") in events(api_client, namespace, "tiny") and events(api_client, namespace, "tiny"),
        timeout=30,
        message="Ready event",
    )
    assert ("Normal", "Caching") in got or ("Normal", "Pending") in got


def test_gpu_model_lands_on_a_gpu_node_and_an_impossible_one_is_unschedulable(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "one-gpu", {**TINY, "resources": {"profile": "nvidia-l4"}})
    create_model(api_client, namespace, "too-big", {**TINY, "resources": {"gpus": 5}})
    wait_phase(api_client, namespace, "one-gpu", "Ready")
    [pod] = children(api_client, namespace, "one-gpu")["pod"]
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    model = wait_phase(api_client, namespace, "too-big", "Degraded", Degraded="Unschedulable")
    assert "nvidia.com/gpu" in condition(model, "Degraded")["message"]
    assert model["status"]["lastFailure"]["reason"] == "Unschedulable"


def test_refused_specs_fail_with_a_reason_and_other_models_still_reconcile(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The operator runs with its default download policy: https only.
    plain = {**TINY, "source": {"url": "http://models.example/sd.tar.gz?X-Amz-Signature=s3cr3t"}}
    create_model(api_client, namespace, "plain", plain)
    create_model(api_client, namespace, "odd-profile", {**TINY, "resources": {"profile": "tpu-v9"}})
    create_model(api_client, namespace, "fine", TINY)

    model = wait_phase(api_client, namespace, "plain", "Failed", CacheReady="DownloadRefused")
    message = condition(model, "CacheReady")["message"]
    assert "http://models.example/sd.tar.gz" in message and "plain http is not allowed" in message, message
    assert "s3cr3t" not in message and "s3cr3t" not in model["status"]["source"]
    model = wait_phase(api_client, namespace, "odd-profile", "Failed", Degraded="UnknownProfile")
    assert "tpu-v9" in model["status"]["lastFailure"]["message"]
    assert "nvidia-l4" in model["status"]["lastFailure"]["message"], "names the known profiles"
    wait_phase(api_client, namespace, "fine", "Ready")
    kids = children(api_client, namespace, "plain")
    assert kids["pvc"] == [] and kids["job"] == [] and kids["deployment"] == [], "nothing is applied for a refused spec"
    assert ("Warning", "DownloadRefused") in events(api_client, namespace, "plain")

    # Refused after serving (the source becomes an http URL): nothing new is applied, but the pods of the
    # earlier spec keep serving and status says so instead of 0 ready.
    patch_model_spec(api_client, namespace, "fine", {"source": {"tiny": None, "url": "http://models.example/x.zip"}})
    model = wait_phase(api_client, namespace, "fine", "Failed", timeout=60, CacheReady="DownloadRefused")
    assert model["status"]["readyReplicas"] == 1 and model["status"]["ready"] == "1/1"
    assert condition(model, "Available")["status"] == "True"
    job = children(api_client, namespace, "fine")["job"][0]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--tiny", "sd"], "left as it was"


def _report_exit(api: client.ApiClient, ns: str, pod: dict[str, Any], exit_code: int, message: str) -> None:
    """What a kubelet reports when fetch-model exits (kwok is not running this pod); 0 is success."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": "fetch",
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Error",
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }
    code, answer = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer


def test_failing_cache_job_shows_download_failed_with_its_message(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The Job's pod cannot schedule (no such node), so no fake kubelet runs it; we report its failure.
    spec = {
        "source": {"url": "https://models.example/missing.tar.gz"},
        "resources": {"gpus": 0, "nodeSelector": {"kubediffusion.io/test": "nowhere"}},
        "cache": {"size": "1Gi"},
    }
    create_model(api_client, namespace, "broken", spec)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    pod = wait_for(
        lambda: list_objects(api_client, pods_path, "job-name=im-broken-cache"), timeout=30, message="cache Job pod"
    )[0]
    error = "GET https://models.example/missing.tar.gz: HTTP 404 Not Found"
    _report_exit(api_client, namespace, pod, 2, json.dumps({"error": error, "source": "url:..."}))

    model = wait_phase(api_client, namespace, "broken", "Failed", CacheReady="DownloadFailed")
    assert condition(model, "CacheReady")["message"] == error
    assert model["status"]["lastFailure"] == {
        **model["status"]["lastFailure"],
        "reason": "DownloadFailed",
        "message": error,
        "exitCode": 2,
    }
    assert condition(model, "Degraded") | {"lastTransitionTime": None} == condition(model, "Degraded") | {
        "status": "True",
        "reason": "DownloadFailed",
        "lastTransitionTime": None,
    }
    job = children(api_client, namespace, "broken")["job"][0]
    assert {c["type"] for c in job["status"]["conditions"] if c["status"] == "True"} >= {"Failed"}
    deployment = children(api_client, namespace, "broken")["deployment"][0]
    assert deployment["spec"]["replicas"] == 0, "no pods without a cache"
    wait_for(
        lambda: ("Warning", "DownloadFailed") in events(api_client, namespace, "broken"),
        timeout=20,
        message="DownloadFailed event",
    )


def _pod_hashes(api: client.ApiClient, ns: str, name: str) -> set[str]:
    return {
        p["metadata"]["labels"]["pod-template-hash"]
        for p in children(api, ns, name)["pod"]
        if not p["metadata"].get("deletionTimestamp")
    }


def test_spec_change_rolls_out_a_new_pod_template(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "roll", TINY)
    wait_phase(api_client, namespace, "roll", "Ready")
    [old_hash] = _pod_hashes(api_client, namespace, "roll")
    patch_model_spec(api_client, namespace, "roll", {"serving": {"maxBatchSize": 2}})

    def rolled() -> bool:
        model = get_model(api_client, namespace, "roll") or {}
        status = model.get("status") or {}
        hashes = _pod_hashes(api_client, namespace, "roll")
        return (
            status.get("observedGeneration") == 2
            and status.get("phase") == "Ready"
            and len(hashes) == 1
            and (old_hash not in hashes)
        )

    wait_for(rolled, timeout=90, interval=0.5, message="rollout of the new pod template")
    env = children(api_client, namespace, "roll")["deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KD_INFERENCE_MAX_BATCH_SIZE", "value": "2"} in env
    assert len(children(api_client, namespace, "roll")["replicaset"]) == 2


def test_someone_elses_edit_of_a_managed_field_is_corrected(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "drift", TINY)
    wait_phase(api_client, namespace, "drift", "Ready")
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/im-drift"
    code, answer = raw(
        api_client,
        "PATCH",
        path,
        {"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
        fieldManager="someone-else",
    )
    assert code == 200, answer
    svc = f"/api/v1/namespaces/{namespace}/services/im-drift"
    code, answer = raw(
        api_client,
        "PATCH",
        svc,
        {"spec": {"selector": {"app": "wrong", "kubediffusion.io/model": None}}},
        content_type="application/merge-patch+json",
        fieldManager="someone-else",
    )
    assert code == 200, answer

    def corrected() -> bool:
        dep = raw(api_client, "GET", path)[1]
        selector = raw(api_client, "GET", svc)[1]["spec"]["selector"]
        return dep["spec"]["replicas"] == 1 and selector.get("kubediffusion.io/model") == "drift"

    wait_for(corrected, timeout=40, interval=0.5, message="drift corrected by the resync")


def test_operator_restart_mid_reconcile_converges_without_duplicates(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "restart", {**TINY, "replicas": 2})
    wait_for(lambda: children(api_client, namespace, "restart")["job"], timeout=30, message="cache Job created")
    operator.kill()  # mid-reconcile: the cache is filling, the Deployment is still at 0
    try:
        model = get_model(api_client, namespace, "restart")
        assert (model or {}).get("status", {}).get("phase") != "Ready"
    finally:
        operator.start()
    wait_phase(api_client, namespace, "restart", "Ready")
    kids = children(api_client, namespace, "restart")
    counts = {kind: len(objs) for kind, objs in kids.items()}
    assert counts == {"pvc": 1, "job": 1, "deployment": 1, "replicaset": 1, "service": 1, "pod": 2}, counts
    assert len(list_objects(api_client, f"/api/v1/namespaces/{namespace}/pods", "job-name=im-restart-cache")) == 1


@pytest.mark.parametrize("retain", [True, False], ids=["retain", "delete"])
def test_deleting_the_model_removes_children_and_the_cache_per_retain_on_delete(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess, retain: bool
) -> None:
    create_model(api_client, namespace, "gone", {**TINY, "cache": {"size": "1Gi", "retainOnDelete": retain}})
    wait_phase(api_client, namespace, "gone", "Ready")
    pvc = children(api_client, namespace, "gone")["pvc"][0]
    assert ("ownerReferences" in pvc["metadata"]) is not retain
    delete_model(api_client, namespace, "gone")

    def collected() -> bool:
        kids = children(api_client, namespace, "gone")
        rest = [k for k in ("job", "deployment", "replicaset", "service", "pod") if kids[k]]
        pvcs = [p for p in kids["pvc"] if not p["metadata"].get("deletionTimestamp")]
        return get_model(api_client, namespace, "gone") is None and not rest and len(pvcs) == (1 if retain else 0)

    wait_for(collected, timeout=90, interval=0.5, message="garbage collection of the children")
    if not retain:
        wait_for(lambda: not children(api_client, namespace, "gone")["pvc"], timeout=60, message="PVC deleted")


def test_new_source_replaces_the_cache_job_and_rolls_the_pods(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "resrc", TINY)
    wait_phase(api_client, namespace, "resrc", "Ready")
    old_job = children(api_client, namespace, "resrc")["job"][0]
    [old_hash] = _pod_hashes(api_client, namespace, "resrc")
    patch_model_spec(api_client, namespace, "resrc", {"source": {"tiny": {"kind": "sdxl"}}})

    def refilled() -> bool:
        model = get_model(api_client, namespace, "resrc") or {}
        status = model.get("status") or {}
        jobs = children(api_client, namespace, "resrc")["job"]
        hashes = _pod_hashes(api_client, namespace, "resrc")
        return (
            status.get("observedGeneration") == 2
            and status.get("phase") == "Ready"
            and [j["metadata"]["uid"] for j in jobs] != [old_job["metadata"]["uid"]]
            and len(jobs) == 1
            and len(hashes) == 1
            and old_hash not in hashes
        )

    wait_for(refilled, timeout=90, interval=0.5, message="new cache Job and rolled pods")
    job = children(api_client, namespace, "resrc")["job"][0]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--tiny", "sdxl"]
    model = get_model(api_client, namespace, "resrc") or {}
    assert model["status"]["source"] == "tiny:sdxl (smoke test)"


def test_a_new_source_leaves_no_cache_details_of_the_old_one_in_status(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # Status is server-side applied: fields the new status no longer has must disappear (a merge patch
    # would merge nested objects, and status.cache would keep the old download's key and completion time).
    create_model(api_client, namespace, "moved", TINY)
    model = wait_phase(api_client, namespace, "moved", "Ready", CacheReady="Downloaded")
    assert {"key", "completedAt"} <= set(model["status"]["cache"])
    pvc_source = {"tiny": None, "pvc": {"claimName": "im-moved-cache", "path": "model"}}
    patch_model_spec(api_client, namespace, "moved", {"source": pvc_source})

    def moved() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "moved") or {}
        status = model.get("status") or {}
        settled = status.get("observedGeneration") == 2 and status.get("phase") == "Ready"
        return model if settled and condition(model, "CacheReady").get("reason") == "VolumeReady" else None

    model = wait_for(moved, timeout=90, interval=0.5, message="served from the pvc source")
    assert model["status"]["cache"] == {"claimName": "im-moved-cache", "path": "/models/model"}


def test_the_resolved_revision_of_an_old_source_disappears_from_status(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The cache Job's pod cannot schedule, so no fake kubelet runs it; we report fetch-model's success
    # with the summary it writes (the resolved revision), as a kubelet would.
    spec = {
        "source": {"url": "https://models.example/v1.tar.gz"},
        "resources": {"gpus": 0, "nodeSelector": {"kubediffusion.io/test": "nowhere"}},
        "cache": {"size": "1Gi"},
    }
    create_model(api_client, namespace, "revised", spec)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    pod = wait_for(
        lambda: list_objects(api_client, pods_path, "job-name=im-revised-cache"), timeout=30, message="cache Job pod"
    )[0]
    summary = {"source": "url:v1", "revision": "sha256:abc123", "bytes": 42, "completedAt": "2026-01-01T00:00:00Z"}
    _report_exit(api_client, namespace, pod, 0, json.dumps(summary))

    def revised() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "revised") or {}
        cache = (model.get("status") or {}).get("cache") or {}
        return model if cache.get("revision") == "sha256:abc123" else None

    model = wait_for(revised, timeout=60, interval=0.3, message="status.cache.revision from the fetch summary")
    old_cache = model["status"]["cache"]
    assert old_cache["bytes"] == 42 and "completedAt" in old_cache
    assert condition(model, "CacheReady")["reason"] == "Downloaded"
    # The status subresource has one manager, ours, and it applies (so it owns what it stops applying).
    status_managers = [m for m in model["metadata"]["managedFields"] if m.get("subresource") == "status"]
    assert [(m["manager"], m["operation"]) for m in status_managers] == [("kubediffusion-operator", "Apply")]

    patch_model_spec(api_client, namespace, "revised", {"source": {"url": "https://models.example/v2.tar.gz"}})

    def refetching() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "revised") or {}
        status = model.get("status") or {}
        pending = (status.get("cache") or {}).get("pending") or {}
        return (
            model
            if status.get("observedGeneration") == 2 and pending.get("key") not in (None, old_cache["key"])
            else None
        )

    # Side by side: until the new copy is complete, status.cache is the copy that serves, plus the pending one.
    model = wait_for(refetching, timeout=60, interval=0.3, message="status of the new source")
    assert model["status"]["cache"]["revision"] == "sha256:abc123"
    assert model["status"]["source"] == "https://models.example/v2.tar.gz"
    new_key = model["status"]["cache"]["pending"]["key"]
    pod = wait_for(
        lambda: [p for p in list_objects(api_client, pods_path, "job-name=im-revised-cache")
                 if p["metadata"]["uid"] != pod["metadata"]["uid"]],
        timeout=30, message="the new cache Job's pod",
    )[0]  # fmt: skip
    _report_exit(api_client, namespace, pod, 0, json.dumps({"source": "url:v2", "revision": "sha256:def456"}))

    def revised_again() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "revised") or {}
        cache = (model.get("status") or {}).get("cache") or {}
        return model if cache.get("key") == new_key else None

    cache = wait_for(revised_again, timeout=60, interval=0.3, message="the new copy")["status"]["cache"]
    # The old copy's details are gone, not merged into the new one's (its summary had no bytes).
    assert cache["revision"] == "sha256:def456" and "bytes" not in cache and "pending" not in cache, cache


def test_a_spec_the_api_server_refuses_to_apply_degrades_the_model_and_keeps_it_serving(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "shrink", TINY)
    wait_phase(api_client, namespace, "shrink", "Ready")
    patch_model_spec(api_client, namespace, "shrink", {"cache": {"size": "512Mi"}})  # a claim cannot shrink
    model = wait_phase(api_client, namespace, "shrink", "Degraded", Degraded="ApplyRejected", Ready="Ready")
    assert "PersistentVolumeClaim im-shrink-cache" in condition(model, "Degraded")["message"]
    assert model["status"]["lastFailure"]["reason"] == "ApplyRejected"
    assert model["status"]["ready"] == "1/1"


def test_deleting_the_finished_cache_job_does_not_take_the_model_down(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "janitor", TINY)
    wait_phase(api_client, namespace, "janitor", "Ready")
    [old_job] = children(api_client, namespace, "janitor")["job"]
    assert raw(api_client, "DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/im-janitor-cache")[0] == 200

    def rechecked() -> bool:
        kids = children(api_client, namespace, "janitor")
        assert kids["deployment"][0]["spec"]["replicas"] == 1, "scaled down while the weights are cached"
        model = get_model(api_client, namespace, "janitor") or {}
        jobs = kids["job"]
        done = (
            jobs and jobs[0]["metadata"]["uid"] != old_job["metadata"]["uid"] and "completionTime" in jobs[0]["status"]
        )
        return bool(done) and (model.get("status") or {}).get("phase") == "Ready"

    wait_for(rechecked, timeout=60, interval=0.2, message="a new cache Job, the model serving all along")


CRASH = {
    "phase": "Running",
    "containerStatuses": [
        {
            "name": "inference",
            "image": operator_fixture.TEST_IMAGE,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "OSError: no file named model_index.json found in /models/sd",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "finishedAt": "2026-01-01T00:00:05Z",
                }
            },
        }
    ],
}
PULL = {
    "phase": "Pending",
    "containerStatuses": [
        {
            "name": "inference",
            "image": operator_fixture.TEST_IMAGE,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "kubediffusion/inference:test"',
                }
            },
        }
    ],
}


@pytest.mark.parametrize(
    ("kubelet_status", "reason", "words"),
    [(CRASH, "ModelLoadFailed", "model_index.json"), (PULL, "ImagePullBackOff", "Back-off pulling image")],
    ids=["crash-loop", "image-pull"],
)
def test_pod_failures_reported_by_the_kubelet_degrade_the_model(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet_status: dict[str, Any],
    reason: str,
    words: str,
) -> None:
    # A pvc source (no cache Job) whose pod first cannot schedule; then we bind it to a kwok node told
    # to leave its status alone and report what a kubelet would.
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    assert raw(api_client, "POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)[0] == 201
    spec = {
        "source": {"pvc": {"claimName": "shared", "path": "sd"}},
        "resources": {"gpus": 0, "nodeSelector": {"kubediffusion.io/test": "nowhere"}},
    }
    create_model(api_client, namespace, "sick", spec)
    model = wait_phase(api_client, namespace, "sick", "Degraded", Degraded="Unschedulable", CacheReady="VolumeReady")
    assert "didn't match Pod's node affinity/selector" in condition(model, "Degraded")["message"]

    [pod] = children(api_client, namespace, "sick")["pod"]
    name = pod["metadata"]["name"]
    pod_path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    code, answer = raw(
        api_client,
        "PATCH",
        pod_path,
        {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "cpu-node-0"},
    }
    code, answer = raw(api_client, "POST", f"{pod_path}/binding", binding)
    assert code == 201, answer
    code, answer = raw(
        api_client,
        "PATCH",
        f"{pod_path}/status",
        {"status": {**kubelet_status, "conditions": [{"type": "PodScheduled", "status": "True"}]}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer

    model = wait_phase(api_client, namespace, "sick", "Degraded", Degraded=reason, Ready=reason)
    assert words in condition(model, "Degraded")["message"]
    assert model["status"]["lastFailure"]["reason"] == reason
    if reason == "ModelLoadFailed":
        assert model["status"]["lastFailure"]["exitCode"] == 1
    wait_for(lambda: ("Warning", reason) in events(api_client, namespace, "sick"), timeout=20, message="event")
    deployment = children(api_client, namespace, "sick")["deployment"][0]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KD_INFERENCE_MODEL_DIR"] == "/models/sd"


# --- Performance (issue 17): children watched, applies skipped when nothing changed -----------------


def api_requests(api: client.ApiClient, verb: str, resources: set[str]) -> float:
    """How many requests the API server has answered with this verb on these resources (every client)."""
    code, text = raw(api, "GET", "/metrics")
    assert code == 200 and isinstance(text, str), code
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and f'verb="{verb}"' in line:
            resource = line.split('resource="', 1)[1].split('"', 1)[0] if 'resource="' in line else ""
            total += float(line.rpartition(" ")[2]) if resource in resources else 0.0
    return total


@pytest.fixture
def slow_polling_operator(
    control_plane: Cluster,
    imagemodel_crd: str,
    cache_storage: Path,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """Polls and resyncs far apart: whatever happens sooner was brought by a watch event."""
    env = {"KD_OPERATOR_NAMESPACE": namespace, "KD_OPERATOR_POLL_SECONDS": "120", "KD_OPERATOR_RESYNC_SECONDS": "300"}
    proc = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_finished_download_and_an_available_rollout_show_at_once_not_at_the_next_poll(
    api_client: client.ApiClient, namespace: str, slow_polling_operator: OperatorProcess
) -> None:
    # The cache Job completes and the Deployment becomes available after the reconciles that created
    # them; only their own events (the Job's, the Deployment's) bring the model to Ready before a poll.
    create_model(api_client, namespace, "evented", TINY)
    model = wait_phase(api_client, namespace, "evented", "Ready", timeout=60, CacheReady="Downloaded")
    assert condition(model, "Ready")["status"] == "True"


@pytest.fixture
def resyncing_operator(
    control_plane: Cluster,
    imagemodel_crd: str,
    cache_storage: Path,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    env = {"KD_OPERATOR_NAMESPACE": namespace, "KD_OPERATOR_RESYNC_SECONDS": "1"}
    proc = OperatorProcess(control_plane.kubeconfig, tmp_path / "operator.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_reconciles_of_an_unchanged_model_apply_nothing_and_drift_is_still_taken_back(
    api_client: client.ApiClient, namespace: str, resyncing_operator: OperatorProcess
) -> None:
    create_model(api_client, namespace, "steady", TINY)
    wait_phase(api_client, namespace, "steady", "Ready")
    children_kinds = {"persistentvolumeclaims", "services", "deployments", "jobs", "imagemodels"}
    applies = api_requests(api_client, "APPLY", children_kinds)
    reads = api_requests(api_client, "GET", {"imagemodels"})  # each reconcile reads its model first
    wait_for(
        lambda: api_requests(api_client, "GET", {"imagemodels"}) >= reads + 3,
        timeout=60,
        message="three resyncs of the Ready model",
    )
    assert api_requests(api_client, "APPLY", children_kinds) == applies, "nothing changed: nothing applied"

    # Someone else's edit of a field the operator applies is drift: the next reconcile applies it back.
    svc = f"/api/v1/namespaces/{namespace}/services/im-steady"
    code, answer = raw(
        api_client,
        "PATCH",
        svc,
        {"spec": {"selector": {"app": "wrong", "kubediffusion.io/model": None}}},
        content_type="application/merge-patch+json",
        fieldManager="someone-else",
    )
    assert code == 200, answer
    wait_for(
        lambda: raw(api_client, "GET", svc)[1]["spec"]["selector"].get("kubediffusion.io/model") == "steady",
        timeout=30,
        message="drift of an unwatched child taken back by the next reconcile",
    )


def test_engine_models_have_no_cache_and_follow_their_pods_to_ready(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # Restricted Pod Security, as for the tiny model: a native sidecar with its writable root passes too.
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    code, answer = raw(
        api_client,
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": labels}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, answer
    create_model(api_client, namespace, "stub", {"engine": {"name": "stub"}})
    webui = {
        "name": "automatic1111",
        "url": "http://sd-webui.tools.svc:7860",
        "credentialsSecretRef": {"name": "a", "key": "k"},
    }
    create_model(api_client, namespace, "webui", {"engine": webui})
    comfy = {"name": "comfyui", "image": "registry.example/comfyui:1", "model": "sd_xl_base_1.0.safetensors"}
    create_model(api_client, namespace, "comfy", {"engine": comfy, "resources": {"profile": "nvidia-l4"}})
    for name in ("stub", "webui", "comfy"):
        model = wait_phase(api_client, namespace, name, "Ready", CacheReady="NotNeeded", Ready="Ready")
        assert "cache" not in model["status"] and model["status"]["ready"] == "1/1"
        kids = children(api_client, namespace, name)
        assert kids["pvc"] == [] and kids["job"] == [], f"{name}: no claim and no cache Job"
        assert [d["metadata"]["name"] for d in kids["deployment"]] == [f"im-{name}"]
        assert [s["metadata"]["name"] for s in kids["service"]] == [f"im-{name}"]
    assert (get_model(api_client, namespace, "stub") or {})["status"]["smokeTest"] is True

    [pod] = children(api_client, namespace, "comfy")["pod"]
    assert pod["spec"]["nodeName"].startswith("gpu-node-"), "the sidecar's GPU puts the pod on a GPU node"
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["resources"]["limits"]["nvidia.com/gpu"] == "1"
    [server] = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(server["resources"])
    assert server["image"] == f"ghcr.io/kubediffusion/kubediffusion:{__version__}", "the operator's own small image"
    rows = {row["Name"]: row for row in table(api_client, namespace)}
    assert rows["webui"]["Source"] == "automatic1111: http://sd-webui.tools.svc:7860"
    assert rows["comfy"]["Source"] == "comfyui: sidecar registry.example/comfyui:1"
    assert rows["stub"]["Source"] == "stub (smoke test)"
