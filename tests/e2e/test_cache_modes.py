"""Caches across nodes: with ``cache.mode: perNode`` each pod downloads its own copy into a generic ephemeral
volume in an init container (no shared claim, no cache Job) and serves from it."""

from __future__ import annotations

import json

import pytest

from kubediffusion.imagemodel import names
from tests.cluster.operator_fixture import condition, get_model, list_objects
from tests.e2e.stack import E2EStack, decode_image
from tests.support.provisioner import claim_directory

pytestmark = pytest.mark.e2e

MODEL = "per-node"


def test_per_node_pods_become_ready_from_their_own_ephemeral_copy(e2e_stack: E2EStack) -> None:
    stack, ns = e2e_stack, e2e_stack.namespace
    stack.apply_model(MODEL, {"source": {"tiny": {}}, "replicas": 2, "cache": {"mode": "perNode", "size": "1Gi"}})
    model = stack.wait_ready(MODEL, replicas=2)
    cache_ready = condition(model, "CacheReady")
    assert cache_ready["status"] == "True" and cache_ready["reason"] == "PerNodeCache"
    assert model["status"]["cache"]["revision"] == "tiny-sd", "what a pod's fetch-model reported"
    assert "claimName" not in model["status"]["cache"]

    selector = f"{names.MODEL_LABEL}={MODEL}"
    assert list_objects(stack.api, f"/apis/batch/v1/namespaces/{ns}/jobs", selector) == [], "no cache Job"
    claims = list_objects(stack.api, f"/api/v1/namespaces/{ns}/persistentvolumeclaims", selector)
    pods = list_objects(stack.api, f"/api/v1/namespaces/{ns}/pods", f"{selector},app.kubernetes.io/component=inference")
    assert len(pods) == 2
    # One claim per pod, made by Kubernetes from the template and owned by the pod; no shared im-<name>-cache.
    assert sorted(c["metadata"]["name"] for c in claims) == sorted(f"{p['metadata']['name']}-cache" for p in pods)
    for claim in claims:
        (owner,) = claim["metadata"]["ownerReferences"]
        assert owner["kind"] == "Pod"
    key_dir = names.cache_dir(model["status"]["cache"]["key"]).removeprefix(f"{names.MODELS_MOUNT}/")
    for pod in pods:
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["name"] == "fetch" and init["state"]["terminated"]["exitCode"] == 0
        assert json.loads(init["state"]["terminated"]["message"])["revision"] == "tiny-sd"
        copy = claim_directory(stack.runner.volume_root, ns, f"{pod['metadata']['name']}-cache") / key_dir
        assert (copy / names.CACHE_MARKER).is_file() and (copy / "model_index.json").is_file()

    client = stack.client()
    for _ in range(2):
        result = client.images.generate(model=MODEL, prompt="local copy", size="64x64", response_format="b64_json")
        assert decode_image(result.data[0].b64_json or "").size == (64, 64)
    assert (get_model(stack.api, ns, MODEL) or {})["status"]["phase"] == "Ready"
