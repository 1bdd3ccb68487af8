"""The API server itself rejects invalid ImageModels (OpenAPI schema + CEL) with a message naming the field,
and keeps every field of the operator's typed status (the status schema prunes unknown fields silently)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from lightkube import Client, KubeConfig

from kubediffusion.imagemodel.names import FIELD_MANAGER
from kubediffusion.imagemodel.status import (
    AutoscalingStatus,
    CacheCopy,
    CacheStatus,
    Condition,
    ImageModelStatus,
    LastFailure,
)
from kubediffusion.operator.kube import RESOURCES, Kube, KubeError
from tests.cluster.operator_fixture import create_model, get_model, raw
from tests.support import engine_specs
from tests.support.examples import companions, image_model, image_model_examples
from tests.support.fixtures import Cluster

pytestmark = pytest.mark.cluster

EXAMPLES = image_model_examples()
VALID: dict[str, Any] = {
    "apiVersion": "kubediffusion.io/v1alpha1",
    "kind": "ImageModel",
    "metadata": {"name": "m"},
    "spec": {"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo"}}},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    doc["spec"].update(changes)
    return doc


def create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return raw(api, "POST", f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels", doc, dryRun="All")


def named(name: str) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    doc["metadata"]["name"] = name
    return doc


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no spec", {**VALID, "spec": None}, "spec"),
    ("no source", with_spec(source=None), "spec.source"),
    ("empty source", with_spec(source={}), "spec.source"),
    ("two sources", with_spec(source={"tiny": {}, "url": "https://h/m.tar.gz"}), "spec.source"),
    ("bad repo", with_spec(source={"huggingface": {"repo": "not a repo!"}}), "spec.source.huggingface.repo"),
    ("repo missing", with_spec(source={"huggingface": {"revision": "main"}}), "spec.source.huggingface.repo"),
    ("url not an archive", with_spec(source={"url": "https://h/model.bin"}), "spec.source.url"),
    ("url bad scheme", with_spec(source={"url": "ftp://h/model.tar.gz"}), "spec.source.url"),
    ("pvc without claim", with_spec(source={"pvc": {"path": "x"}}), "spec.source.pvc.claimName"),
    ("pvc path escapes", with_spec(source={"pvc": {"claimName": "c", "path": "../other"}}), "spec.source.pvc.path"),
    ("pvc absolute path", with_spec(source={"pvc": {"claimName": "c", "path": "/etc"}}), "spec.source.pvc.path"),
    ("tiny unknown kind", with_spec(source={"tiny": {"kind": "huge"}}), "spec.source.tiny.kind"),
    ("negative replicas", with_spec(replicas=-1), "spec.replicas"),
    ("too many replicas", with_spec(replicas=1000), "spec.replicas"),
    ("bad dtype", with_spec(dtype="int8"), "spec.dtype"),
    ("bad size", with_spec(defaults={"size": "1024"}), "spec.defaults.size"),
    ("size with letters", with_spec(defaults={"size": "axb"}), "spec.defaults.size"),
    ("steps zero", with_spec(defaults={"steps": 0}), "spec.defaults.steps"),
    ("min above max", with_spec(limits={"minSize": 1024, "maxSize": 512}), "spec.limits.minSize"),
    ("maxN too big", with_spec(limits={"maxN": 11}), "spec.limits.maxN"),
    ("default steps above max", with_spec(defaults={"steps": 60}, limits={"maxSteps": 50}), "spec.defaults.steps"),
    ("negative gpus", with_spec(resources={"gpus": -1}), "spec.resources.gpus"),
    ("bad gpu resource name", with_spec(resources={"gpuResourceName": "nvidia gpu"}), "spec.resources.gpuResourceName"),
    (
        "bad toleration operator",
        with_spec(resources={"tolerations": [{"operator": "Maybe"}]}),
        "spec.resources.tolerations[0].operator",
    ),
    ("bad cache size", with_spec(cache={"size": "lots"}), "spec.cache.size"),
    ("bad access mode", with_spec(cache={"accessMode": "ReadWriteSometimes"}), "spec.cache.accessMode"),
    (
        "existing claim with pvc source",
        with_spec(source={"pvc": {"claimName": "c"}}, cache={"existingClaim": "d"}),
        "spec.cache.existingClaim",
    ),
    ("queue below batch", with_spec(serving={"maxBatchSize": 8, "maxQueue": 4}), "spec.serving.maxQueue"),
    ("batch too big", with_spec(serving={"maxBatchSize": 1000}), "spec.serving.maxBatchSize"),
    ("preset without {prompt}", with_spec(presets={"anime": {"prompt": "anime"}}), "spec.presets[anime].prompt"),
    ("preset bad name", with_spec(presets={"Bad Name": {"prompt": "{prompt}"}}), "spec.presets"),
    ("bad pipeline", with_spec(pipeline="rm -rf"), "spec.pipeline"),
    ("duplicate aliases", with_spec(aliases=["a", "a"]), "spec.aliases[1]"),
    (
        "autoscaling min above max",
        with_spec(autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
    ),
    ("autoscaling without max", with_spec(autoscaling={"minReplicas": 0}), "spec.autoscaling.maxReplicas"),
    ("replicas and autoscaling", with_spec(replicas=2, autoscaling={"maxReplicas": 3}), "spec.replicas"),
    (
        "per-node cache of a pvc",
        with_spec(source={"pvc": {"claimName": "c"}}, cache={"mode": "perNode"}),
        "spec.cache.mode",
    ),
    ("bad cache mode", with_spec(cache={"mode": "everywhere"}), "spec.cache.mode"),
    ("bad swap", with_spec(cache={"swap": "inPlace"}), "spec.cache.swap"),
    ("name too long", named("m" * 60), "metadata.name"),
    ("wrong type", with_spec(replicas="two"), "spec.replicas"),
]


@pytest.mark.parametrize(("case", "doc", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_imagemodel_is_rejected_naming_the_field(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, case: str, doc: dict[str, Any], field: str
) -> None:
    status, answer = create(api_client, namespace, doc)
    assert status == 422, f"{case}: expected 422, got {status} {answer}"
    message = answer["message"]
    assert field in message, f"{case}: {field!r} not in {message!r}"


@pytest.mark.parametrize("invalid", engine_specs.INVALID, ids=[c.case for c in engine_specs.INVALID])
def test_invalid_engine_is_rejected_naming_the_field(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, invalid: engine_specs.Invalid
) -> None:
    # The same table the typed spec refuses (tests/unit/operator/test_operator_engine_spec.py).
    status, answer = create(api_client, namespace, {**VALID, "spec": invalid.spec})
    assert status == 422, f"{invalid.case}: expected 422, got {status} {answer}"
    assert invalid.api in answer["message"], f"{invalid.case}: {invalid.api!r} not in {answer['message']!r}"


@pytest.mark.parametrize("case", sorted(engine_specs.VALID))
def test_valid_engines_are_accepted(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, case: str
) -> None:
    status, answer = create(api_client, namespace, {**VALID, "spec": engine_specs.VALID[case]})
    assert status == 201, answer


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(api_client: client.ApiClient, namespace: str, imagemodel_crd: str, path: Path) -> None:
    status, answer = create(api_client, namespace, image_model(path))
    assert status == 201, answer
    for doc in companions(path):  # what the example applies with its model (a ConfigMap)
        assert doc["kind"] == "ConfigMap", doc["kind"]
        code, created = raw(api_client, "POST", f"/api/v1/namespaces/{namespace}/configmaps", doc, dryRun="All")
        assert code == 201, created


def test_minimal_and_full_specs_are_accepted(api_client: client.ApiClient, namespace: str, imagemodel_crd: str) -> None:
    full = with_spec(
        source={"huggingface": {"repo": "a/b", "revision": "v1.0", "tokenSecretRef": {"name": "hf", "key": "token"}}},
        pipeline="StableDiffusionXLPipeline",
        dtype="bfloat16",
        aliases=["dall-e-2", "sdxl:turbo"],
        default=True,
        defaults={"steps": 4, "guidance": 0.0, "size": "512x768", "negativePrompt": ""},
        limits={"minSize": 256, "maxSize": 1024, "maxN": 4, "maxSteps": 50, "maxPromptChars": 2000},
        presets={"anime": {"prompt": "{prompt}, anime", "negativePrompt": "photo"}},
        replicas=0,
        resources={
            "gpus": 2,
            "gpuResourceName": "nvidia.com/gpu",
            "profile": "nvidia-l4",
            "cpu": "4",
            "memory": "32Gi",
            "nodeSelector": {"a": "b"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "p",
            "runtimeClassName": "nvidia",
        },
        cache={"size": "20Gi", "storageClassName": "fast", "accessMode": "ReadWriteOnce", "retainOnDelete": False},
        serving={"maxBatchSize": 4, "batchWindowMs": 20, "maxQueue": 16, "compile": False, "warmup": True},
        image="registry.example/inference:1",
    )
    assert create(api_client, namespace, VALID)[0] == 201
    status, answer = create(api_client, namespace, full)
    assert status == 201, answer
    assert answer["spec"]["resources"]["affinity"] == {"nodeAffinity": {}}, "affinity is preserved, not pruned"


@pytest.fixture
def kube(control_plane: Cluster) -> Iterator[Kube]:
    """The operator's own gateway (lightkube), pointed at the test cluster."""
    lightkube = Client(KubeConfig.from_file(control_plane.kubeconfig), field_manager=FIELD_MANAGER)
    try:
        yield Kube(lightkube)
    finally:
        lightkube.close()


FULL_STATUS = ImageModelStatus(
    phase="Ready",
    observed_generation=1,
    source="hf:stabilityai/sdxl-turbo@main",
    smoke_test=False,
    endpoint="http://im-m.ns.svc:8000",
    replicas=2,
    ready_replicas=1,
    ready="1/2",
    selector="kubediffusion.io/model=m,app.kubernetes.io/component=inference",
    cache=CacheStatus(
        claim_name="im-m-cache",
        path="/models/0123456789abcdef",
        key="0123456789abcdef",
        revision="deadbeef",
        bytes=123456789012,
        completed_at="2026-01-01T00:00:00Z",
        pending=CacheCopy(key="fedcba9876543210", path="/models/fedcba9876543210"),
        retiring=CacheCopy(key="0011223344556677", path="/models/model"),
        extras={"adapters/style-a": "sha256:0123", "components/unet": "fedcba98"},
    ),
    autoscaling=AutoscalingStatus(
        desired_replicas=2, load=3.25, reason="ScaleUp", message="load 3.2", last_scale_time="2026-01-01T00:00:09Z"
    ),
    last_failure=LastFailure(
        reason="ContainerRestarted", message="exit 137", exit_code=137, time="2026-01-01T00:00:05Z"
    ),
    conditions=tuple(
        Condition(
            type=type_,
            status="True",
            reason="Reason",
            message="m",
            last_transition_time="2026-01-01T00:00:00Z",
            observed_generation=1,
        )
        for type_ in ("CacheReady", "Available", "Ready", "Degraded")
    ),
)


def test_the_typed_status_is_stored_whole_and_a_field_left_out_is_removed(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, kube: Kube
) -> None:
    # spec.replicas set: the API server cannot GET /scale of a model without it (docs/autoscaling.md).
    create_model(api_client, namespace, "m", {**VALID["spec"], "replicas": 2})
    kube.apply_status(namespace, "m", FULL_STATUS.wire())
    stored = (get_model(api_client, namespace, "m") or {})["status"]
    assert stored == FULL_STATUS.wire(), "a wire name the schema does not know would be pruned"
    assert ImageModelStatus.parse(stored) == FULL_STATUS
    scale = raw(api_client, "GET", f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/m/scale")[1]
    assert scale["status"] == {"replicas": 2, "selector": FULL_STATUS.selector}, "what an HPA reads"

    assert FULL_STATUS.cache is not None and FULL_STATUS.last_failure is not None
    smaller = FULL_STATUS.model_copy(
        update={
            "autoscaling": None,
            "cache": CacheStatus(claim_name="im-m-cache", path="/models/model", key="fedcba9876543210"),
            "last_failure": FULL_STATUS.last_failure.model_copy(update={"exit_code": None}),
            "conditions": FULL_STATUS.conditions[:3],
        }
    )
    kube.apply_status(namespace, "m", smaller.wire())
    stored = (get_model(api_client, namespace, "m") or {})["status"]
    assert stored == smaller.wire()
    assert set(stored["cache"]) == {"claimName", "path", "key"} and "exitCode" not in stored["lastFailure"]
    assert "autoscaling" not in stored
    assert [c["type"] for c in stored["conditions"]] == ["CacheReady", "Available", "Ready"]


def test_the_gateway_maps_api_answers(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, kube: Kube
) -> None:
    assert kube.get("ImageModel", namespace, "absent") is None
    kube.delete("Job", namespace, "absent")  # absent is fine
    kube.apply_status(namespace, "absent", FULL_STATUS.wire())  # deleted meanwhile: nothing to report on
    with pytest.raises(KubeError) as rejected:
        kube.apply({**with_spec(replicas=-1), "metadata": {"name": "m", "namespace": namespace}})
    assert rejected.value.status == 422 and "spec.replicas" in rejected.value.message
    created = kube.apply({**VALID, "metadata": {"name": "m", "namespace": namespace, "labels": {"team": "a"}}})
    assert created["metadata"]["uid"] and created["spec"] == VALID["spec"]
    assert [o["metadata"]["name"] for o in kube.list("ImageModel", namespace, {"team": "a"})] == ["m"]
    assert kube.list("ImageModel", namespace, {"team": "b"}) == []
    # No Secret through the gateway at all: the kubelet resolves a model's token Secret (test_chart_rbac.py
    # checks the operator's ServiceAccount cannot read one either).
    assert "Secret" not in RESOURCES and not hasattr(kube, "secret_key_exists")


def _scale(api: client.ApiClient, namespace: str, name: str, replicas: int) -> tuple[int, Any]:
    """What `kubectl scale im/NAME --replicas=N` sends: a merge patch of the scale subresource."""
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/{name}/scale"
    return raw(api, "PATCH", path, {"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")


def _patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, Any]:
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/{name}"
    return raw(api, "PATCH", path, {"spec": spec}, content_type="application/merge-patch+json")


def test_scale_writes_to_an_autoscaled_model_pass_within_its_bounds_and_a_manifest_may_not_set_both(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str
) -> None:
    # The autoscaler (and a router waking a model) write spec.replicas through /scale on a model with
    # spec.autoscaling: both are then set, which a manifest may not do on create.
    auto = {"source": {"tiny": {}}, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    create_model(api_client, namespace, "auto", auto)
    status, answer = _scale(api_client, namespace, "auto", 1)
    assert status == 200 and answer["spec"]["replicas"] == 1, answer
    assert (get_model(api_client, namespace, "auto") or {})["spec"]["replicas"] == 1
    status, answer = _scale(api_client, namespace, "auto", 3)
    assert status == 422 and "minReplicas..maxReplicas" in answer["message"], answer
    # Bounds may move under the replicas the autoscaler set (it follows at its next decision) ...
    assert _patch_spec(api_client, namespace, "auto", {"autoscaling": {"maxReplicas": 1}})[0] == 200
    assert _patch_spec(api_client, namespace, "auto", {"autoscaling": {"minReplicas": 1}})[0] == 200
    # ... but a write of replicas outside them is refused, whoever sends it.
    status, answer = _patch_spec(api_client, namespace, "auto", {"replicas": 0})
    assert status == 422 and "minReplicas..maxReplicas" in answer["message"], answer

    # A model with replicas may not gain autoscaling while keeping them; dropping them in the same edit is fine.
    create_model(api_client, namespace, "fixed", {"source": {"tiny": {}}, "replicas": 2})
    status, answer = _patch_spec(api_client, namespace, "fixed", {"autoscaling": {"maxReplicas": 3}})
    assert status == 422 and "cannot both be set" in answer["message"], answer
    status, answer = _patch_spec(api_client, namespace, "fixed", {"replicas": None, "autoscaling": {"maxReplicas": 3}})
    assert status == 200, answer
    # kubectl scale works on any model; the scale subresource reads the selector the operator writes.
    assert _scale(api_client, namespace, "fixed", 2)[0] == 200
    plain = create_model(api_client, namespace, "plain", {"source": {"tiny": {}}})
    assert "replicas" not in plain["spec"], "no schema default: a manifest without replicas stays without"
    assert _scale(api_client, namespace, "plain", 4)[0] == 200
    code, scale = raw(
        api_client, "GET", f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels/plain/scale"
    )
    assert code == 200 and scale["spec"]["replicas"] == 4 and scale["kind"] == "Scale"
