"""docs/security.md's example ValidatingAdmissionPolicy does what the page says, on the real API server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.operator_fixture import imagemodel, raw
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
TINY: dict[str, Any] = {"source": {"tiny": {}}, "resources": {"gpus": 0}}


def _documented_policy() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    docs = [d for block in blocks for d in yaml.safe_load_all(block) if d and "ValidatingAdmissionPolicy" in d["kind"]]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    return docs


@pytest.fixture
def tenant_policy(api_client: client.ApiClient, imagemodel_crd: str, namespace: str) -> Iterator[None]:
    """The documented policy and binding, renamed for this test and bound to its namespace (cluster-scoped)."""
    policy, binding = _documented_policy()
    name = f"{policy['metadata']['name']}-{namespace[-6:]}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    labels = {"metadata": {"labels": {"kubediffusion.io/tenant": "true"}}}
    code, answer = raw(api_client, "PATCH", f"/api/v1/namespaces/{namespace}", labels,
                       content_type="application/merge-patch+json")  # fmt: skip
    assert code == 200, answer
    binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] = namespace
    assert raw(api_client, "POST", f"{ADMISSION}/validatingadmissionpolicies", policy)[0] == 201
    try:
        assert raw(api_client, "POST", f"{ADMISSION}/validatingadmissionpolicybindings", binding)[0] == 201
        yield
    finally:
        raw(api_client, "DELETE", f"{ADMISSION}/validatingadmissionpolicybindings/{name}")
        raw(api_client, "DELETE", f"{ADMISSION}/validatingadmissionpolicies/{name}")


def _create(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, Any]:
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels"
    return raw(api, "POST", path, imagemodel(name, spec), dryRun="All")


def test_the_documented_admission_policy_forbids_claims_and_other_secrets(
    api_client: client.ApiClient, namespace: str, tenant_policy: None
) -> None:
    claim = {**TINY, "cache": {"existingClaim": "someone-elses-data"}}
    # A new policy takes a moment to reach the API server's admission: wait until it refuses.
    code, answer = wait_for(
        lambda: (got := _create(api_client, namespace, "claim", claim))[0] != 201 and got,
        timeout=30,
        interval=0.5,
        message="the policy in effect",
    )
    assert code in (400, 403, 422) and "may not mount existing claims" in answer["message"], answer
    code, answer = _create(api_client, namespace, "pvc", {"source": {"pvc": {"claimName": "data"}}})
    assert code != 201 and "may not mount existing claims" in answer["message"], answer

    gated = {"huggingface": {"repo": "org/gated", "tokenSecretRef": {"name": "database-password"}}}
    code, answer = _create(api_client, namespace, "other-secret", {**TINY, "source": gated})
    assert code != 201 and "the only token Secret" in answer["message"], answer

    allowed = {"huggingface": {"repo": "org/gated", "tokenSecretRef": {"name": "hf-token"}}}
    for name, spec in (("tiny", TINY), ("hf", {**TINY, "source": allowed})):
        code, answer = _create(api_client, namespace, name, spec)
        assert code == 201, answer
