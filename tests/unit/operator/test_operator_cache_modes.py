"""Caches across nodes: a ReadWriteOnce cache keeps every pod on one node (and says so with several replicas);
a perNode cache is a generic ephemeral volume per pod, filled by an init container, with no claim or Job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.imagemodel.status import ImageModelStatus
from kubediffusion.operator import status as st
from kubediffusion.operator.parts import CacheVolume, Context, pinned_to_one_node
from kubediffusion.operator.reconcile import reconcile
from kubediffusion.operator.resources import build_cache_job, build_deployment
from kubediffusion.operator.settings import OperatorSettings
from tests.unit.operator.fakekube import FakeKube

OWNER = names.Owner(name="m", namespace="ns", uid="uid-m")
HOSTNAME_TERM = {"labelSelector": {"matchLabels": {names.MODEL_LABEL: "m"}}, "topologyKey": "kubernetes.io/hostname"}


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": {"source": {"tiny": {}}, **spec}})


def ctx(spec: ImageModelSpec) -> Context:
    return Context(owner=OWNER, image="img:1", hardware=resolve_resources(spec.resources, {}))


@pytest.mark.parametrize(
    ("spec", "claim_modes", "pinned"),
    [
        ({}, None, True),  # the default: ReadWriteOnce
        ({"cache": {"accessMode": "ReadWriteOncePod"}}, None, True),
        ({"cache": {"accessMode": "ReadWriteMany"}}, None, False),
        ({"cache": {"accessMode": "ReadOnlyMany"}}, None, False),
        ({"cache": {"existingClaim": "shared"}}, ["ReadWriteMany"], False),  # what the claim itself allows
        ({"cache": {"existingClaim": "shared"}}, ["ReadWriteOnce"], True),
        ({"cache": {"mode": "perNode"}}, None, False),
    ],
)
def test_which_caches_keep_their_pods_on_one_node(
    spec: dict[str, Any], claim_modes: list[str] | None, pinned: bool
) -> None:
    assert pinned_to_one_node(parse(spec), claim_modes) is pinned


def test_pinned_pods_and_cache_job_require_the_node_of_the_models_other_pods() -> None:
    user_term = {"labelSelector": {"matchLabels": {"app": "cache-warmer"}}, "topologyKey": "zone"}
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_term]},
                "nodeAffinity": {"x": 1}}  # fmt: skip
    spec = parse({"resources": {"affinity": affinity}})
    pod = build_deployment(spec, ctx(spec), replicas=2, pin=True)["spec"]["template"]["spec"]
    required = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == [user_term, HOSTNAME_TERM] and pod["affinity"]["nodeAffinity"] == {"x": 1}
    job_pod = build_cache_job(spec, ctx(spec), pin=True)["spec"]["template"]["spec"]  # type: ignore[index]
    assert HOSTNAME_TERM in job_pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    # The term matches the cache Job's pods too (model label, any component): the first pod goes anywhere.
    job_labels = build_cache_job(spec, ctx(spec))["spec"]["template"]["metadata"]["labels"]  # type: ignore[index]
    assert HOSTNAME_TERM["labelSelector"]["matchLabels"].items() <= job_labels.items()
    unpinned = build_deployment(spec, ctx(spec), replicas=2)["spec"]["template"]["spec"]
    assert unpinned["affinity"] == affinity
    # Scaling never changes the template (so never rolls the pods): the pin does not depend on replicas.
    one = build_deployment(spec, ctx(spec), replicas=1, pin=True)["spec"]["template"]
    assert one == build_deployment(spec, ctx(spec), replicas=5, pin=True)["spec"]["template"]


def model(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubediffusion.io/v1alpha1",
        "kind": "ImageModel",
        "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1},
        "spec": {"source": {"tiny": {}}, "resources": {"gpus": 0}, **spec},
    }


def run(kube: FakeKube) -> ImageModelStatus:
    reconcile(kube, OperatorSettings(), namespace="ns", name="m", post_event=lambda b, e: None)  # type: ignore[arg-type]
    return ImageModelStatus.parse(kube.objects[("ImageModel", "m")]["status"])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"replicas": 2}, "CacheNotShareable"),
        ({"replicas": 1}, "Downloaded"),
        ({"replicas": 2, "cache": {"accessMode": "ReadWriteMany"}}, "Downloaded"),
    ],
)
def test_a_read_write_once_cache_with_several_replicas_is_reported_and_pinned(
    spec: dict[str, Any], reason: str
) -> None:
    kube = FakeKube(model(spec))
    run(kube)
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    run(kube)
    kube.objects[("Job", "im-m-cache")]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    status = run(kube)
    cache_ready = status.condition("CacheReady")
    assert cache_ready is not None and cache_ready.ok and cache_ready.reason == reason
    if reason == "CacheNotShareable":
        assert "kept on the node" in cache_ready.message and "perNode" in cache_ready.message
    pinned = "ReadWriteMany" not in json.dumps(spec)
    for kind, name in (("Deployment", "im-m"), ("Job", "im-m-cache")):
        pod = kube.objects[(kind, name)]["spec"]["template"]["spec"]
        terms = ((pod.get("affinity") or {}).get("podAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or []
        assert (HOSTNAME_TERM in terms) is pinned, kind


def test_a_per_node_cache_is_an_ephemeral_volume_per_pod_filled_by_an_init_container() -> None:
    kube = FakeKube(model({"replicas": 2, "cache": {"mode": "perNode", "size": "3Gi", "storageClassName": "fast"}}))
    status = run(kube)
    kinds = {kind for kind, _ in kube.objects}
    assert kinds == {"ImageModel", "Service", "Deployment"}, "no claim, no cache Job"
    dep = kube.objects[("Deployment", "im-m")]
    assert dep["spec"]["replicas"] == 2, "nothing to wait for: each pod fetches before it serves"
    template = dep["spec"]["template"]
    pod = template["spec"]
    key = parse({}).source.cache_key()
    (init,) = pod["initContainers"]
    assert init["command"] == ["kubediffusion", "fetch-model"]
    assert init["args"] == ["--dest", names.cache_dir(key), "--termination-log", "/dev/termination-log", "--tiny", "sd"]
    assert {"name": "cache", "mountPath": "/models"} in init["volumeMounts"], "written by the init container"
    assert {"name": "cache", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "cache"]
    claim = volume["ephemeral"]["volumeClaimTemplate"]
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "3Gi"}},
                             "storageClassName": "fast"}  # fmt: skip
    assert template["metadata"]["labels"][names.DOWNLOADS_LABEL] == "true", "the chart lets it download"
    assert "affinity" not in pod, "every pod has its own copy: no reason to share a node"
    cache_ready = status.condition("CacheReady")
    assert cache_ready is not None and cache_ready.ok and cache_ready.reason == "PerNodeCache"
    assert status.cache is not None and status.cache.claim_name is None and status.cache.key == key


def per_node_pod(init_state: dict[str, Any], *, restarts: int = 0, last: dict[str, Any] | None = None) -> Any:
    init: dict[str, Any] = {"name": "fetch", "restartCount": restarts, "state": init_state}
    if last is not None:
        init["lastState"] = {"terminated": last}
    main = {"name": "inference", "restartCount": 0, "ready": False, "state": {"waiting": {"reason": "PodInitializing"}}}
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Pending", "initContainerStatuses": [init], "containerStatuses": [main]},
    }


def derive(pods: list[Any]) -> ImageModelStatus:
    spec = parse({"replicas": 1, "cache": {"mode": "perNode"}})
    rolled = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}
    deployment = {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": rolled}
    observed = st.Observed(deployment=deployment, pods=pods)
    cache = st.cache_state(spec, CacheVolume("", "", owned=False), observed)
    seen = st.Observation(name="m", namespace="ns", generation=1, spec=spec, children=observed, cache=cache)
    return st.derive_status(seen, previous=ImageModelStatus(), now="2026-01-01T00:00:00Z")


def test_a_per_node_download_that_fails_degrades_the_model_with_fetch_models_own_words() -> None:
    error = {"error": "GET https://h/m.tar.gz: HTTP 404 Not Found", "source": "url:x"}
    failed = {"exitCode": 2, "reason": "Error", "message": json.dumps(error)}
    status = derive([per_node_pod({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=3, last=failed)])
    assert status.phase == "Degraded"
    degraded = status.condition("Degraded")
    assert degraded is not None and degraded.reason == "DownloadFailed" and "404" in degraded.message
    assert status.last_failure is not None and status.last_failure.exit_code == 2
    loading = derive([per_node_pod({"running": {}})])
    assert loading.phase == "Loading", "downloading is loading, in perNode mode"
    summary = {"revision": "sha256:abc", "bytes": 5}
    done = {"exitCode": 0, "reason": "Completed", "message": json.dumps(summary)}
    ready = derive([per_node_pod({"terminated": done})])
    assert ready.cache is not None and (ready.cache.revision, ready.cache.bytes) == ("sha256:abc", 5)
