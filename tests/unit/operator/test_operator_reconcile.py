"""The reconcile against an in-memory API server: the status it applies (once), the children it applies (when not
already as desired). When its handlers poll: test_operator_handlers.py."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel import status as st_reasons
from kubediffusion.imagemodel.status import APPLY_REJECTED, ImageModelStatus
from kubediffusion.operator import status as st
from kubediffusion.operator.handlers import configure_kopf
from kubediffusion.operator.kube import KubeError
from kubediffusion.operator.reconcile import Outcome, Refused, reconcile
from kubediffusion.operator.settings import OperatorSettings
from tests.unit.operator.fakekube import FakeKube


def model(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1}
    return {
        "apiVersion": "kubediffusion.io/v1alpha1",
        "kind": "ImageModel",
        "metadata": meta,
        "spec": spec,
        "status": status,
    }


TINY = {"source": {"tiny": {}}, "resources": {"gpus": 0}}


SETTINGS = OperatorSettings()


def run(
    kube: FakeKube, events: list[st.Event], at: str = "2026-01-01T00:00:00Z", settings: OperatorSettings = SETTINGS
) -> Outcome | None:
    def post(body: Any, event: st.Event) -> None:
        events.append(event)

    return reconcile(kube, settings, namespace="ns", name="m", post_event=post, now=lambda: at)  # type: ignore[arg-type]


def test_the_whole_status_is_applied_once_and_not_again_while_nothing_changes() -> None:
    kube, events = FakeKube(model(TINY)), []
    outcome = run(kube, events)
    assert outcome is not None and outcome.phase == "Pending" and outcome.converging
    [written] = kube.status_writes
    assert written == ImageModelStatus.parse(written).wire(), "the applied status is the whole typed status"
    assert {"phase", "conditions", "cache", "endpoint", "ready", "observedGeneration"} <= set(written)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Pending")]
    run(kube, events, at="2026-01-01T00:05:00Z")
    assert len(kube.status_writes) == 1 and len(events) == 1, "an unchanged status is not written again"
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    outcome = run(kube, events, at="2026-01-01T00:06:00Z")
    assert outcome is not None and outcome.phase == "Caching"
    assert len(kube.status_writes) == 2 and [e.reason for e in events] == ["Pending", "Caching"]


def test_fields_of_the_previous_status_that_no_longer_apply_are_left_out() -> None:
    # With a merge patch these survived (status.cache kept the old download's revision); server-side apply
    # removes a field its manager stops applying, so the applied status must simply not have it.
    old = {
        "phase": "Ready",
        "cache": {"claimName": "im-m-cache", "path": "/models/model", "key": "k1", "revision": "abc", "bytes": 7,
                  "completedAt": "2025-01-01T00:00:00Z"},
        "lastFailure": {"reason": "DownloadFailed", "message": "x", "exitCode": 2, "time": "2025-01-01T00:00:00Z"},
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "Old", "status": "True"}],
    }  # fmt: skip
    # scaleToZero: nothing of the old copy serves on (side by side, status.cache would describe it until
    # the new one is complete: tests/unit/operator/test_operator_swaps.py).
    kube = FakeKube(model({**TINY, "cache": {"swap": "scaleToZero"}}, old))
    run(kube, [])
    [written] = kube.status_writes
    assert set(written["cache"]) == {"claimName", "path", "key"} and written["cache"]["key"] != "k1"
    assert [c["type"] for c in written["conditions"]] == ["CacheReady", "Available", "Ready", "Degraded"]
    assert written["lastFailure"] == old["lastFailure"], "kept after recovery"


def test_an_apply_the_api_server_rejects_is_derived_into_the_status_once() -> None:
    rejected = KubeError(422, "spec.resources.requests.storage: Forbidden: field can not be less than previous value")
    kube, events = FakeKube(model(TINY), reject={"PersistentVolumeClaim": rejected}), []
    outcome = run(kube, events)
    assert outcome is not None and outcome.phase == "Degraded" and outcome.reason == APPLY_REJECTED
    assert not outcome.converging
    [written] = kube.status_writes
    degraded = ImageModelStatus.parse(written).condition("Degraded")
    assert degraded is not None and degraded.ok and "PersistentVolumeClaim im-m-cache" in degraded.message
    assert written["lastFailure"]["reason"] == APPLY_REJECTED
    assert [(e.type, e.reason) for e in events] == [("Warning", APPLY_REJECTED)]
    run(kube, events, at="2026-01-01T00:05:00Z")
    assert len(kube.status_writes) == 1, "a rejection that persists does not rewrite the status"


def test_a_server_error_while_applying_is_raised_for_kopf_to_retry() -> None:
    kube = FakeKube(model(TINY), reject={"Service": KubeError(503, "etcd leader changed")})
    with pytest.raises(KubeError):
        run(kube, [])
    assert kube.status_writes == []


@pytest.mark.parametrize(
    ("spec", "settings", "reason", "words"),
    [
        (
            {"source": {"url": "http://models.example/m.tar.gz?sig=secret"}},
            SETTINGS,
            st_reasons.DOWNLOAD_REFUSED,
            ["http://models.example/m.tar.gz", "plain http is not allowed"],
        ),
        (
            {"source": {"url": "https://elsewhere.example/m.tar.gz"}},
            OperatorSettings(download_allowed_hosts=["models.example"]),
            st_reasons.DOWNLOAD_REFUSED,
            ["'elsewhere.example' is not an allowed host"],
        ),
        (
            {"source": {"tiny": {}}, "image": "evil.example/miner:1"},
            OperatorSettings(allowed_images=["ghcr.io/acme/"]),
            st_reasons.IMAGE_NOT_ALLOWED,
            ["evil.example/miner:1", "ghcr.io/acme/"],
        ),
    ],
    ids=["http", "host", "image"],
)
def test_a_refused_spec_writes_its_status_then_raises_and_applies_nothing(
    spec: dict[str, Any], settings: OperatorSettings, reason: str, words: list[str]
) -> None:
    kube, events = FakeKube(model({**spec, "resources": {"gpus": 0}})), []
    with pytest.raises(Refused, match=reason):
        run(kube, events, settings=settings)
    [written] = kube.status_writes
    assert written["phase"] == "Failed" and written["lastFailure"]["reason"] == reason
    message = written["lastFailure"]["message"]
    assert all(word in message for word in words), message
    assert "sig=secret" not in message, "a presigned URL's signature stays out of status"
    assert [(e.type, e.reason) for e in events] == [("Warning", reason)]
    assert [k for k, _ in kube.objects] == ["ImageModel"], "nothing is applied for a refused spec"


def test_a_spec_within_the_policy_is_applied_with_the_policy_passed_to_fetch_model() -> None:
    settings = OperatorSettings(
        download_allow_http=True, download_allowed_networks=["10.1.0.0/16"], allowed_images=["ghcr.io/acme/"]
    )
    spec = {
        "source": {"url": "http://10.1.2.3/m.tar.gz"},
        "image": "ghcr.io/acme/inference:2",
        "resources": {"gpus": 0},
    }
    kube = FakeKube(model(spec))
    run(kube, [], settings=settings)
    job = kube.objects[("Job", "im-m-cache")]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/inference:2"
    assert container["args"][5:] == [
        "--url", "http://10.1.2.3/m.tar.gz", "--allow-http", "--allow-network", "10.1.0.0/16", "--max-bytes", "20Gi"
    ]  # fmt: skip


def test_a_model_naming_a_token_secret_is_applied_without_reading_secrets() -> None:
    # The operator has no access to Secrets (FakeKube has no secret lookup either): the cache Job's pod gets a
    # secretKeyRef, and the kubelet reports a missing Secret on that pod (SecretNotFound, see the status tests).
    gated = {"source": {"huggingface": {"repo": "a/b", "tokenSecretRef": {"name": "hf"}}}, "resources": {"gpus": 0}}
    kube = FakeKube(model(gated))
    outcome = run(kube, [])
    assert outcome is not None and outcome.phase == "Pending"
    job = kube.objects[("Job", "im-m-cache")]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in env
    assert not [k for k, _ in kube.objects if k == "Secret"]


def test_a_model_scaled_to_zero_or_refused_by_the_api_server_is_settled_not_converging() -> None:
    # Converging models are polled every poll_seconds (timer) forever: only while something can change.
    assert not Outcome("Pending", "spec.replicas is 0", st_reasons.SCALED_TO_ZERO).converging
    assert not Outcome("Degraded", "0/1 pods ready", APPLY_REJECTED).converging
    assert Outcome("Degraded", "back-off", st_reasons.IMAGE_PULL_BACK_OFF).converging
    assert Outcome("Pending", "creating the cache Job", st_reasons.CACHE_PENDING).converging
    assert Outcome("Loading", "0/1 pods ready", st_reasons.STARTING).converging
    assert not Outcome("Ready", "1/1 pods ready", st_reasons.READY).converging


def test_kopf_watches_only_the_operators_own_pods_server_side() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    (selector,) = settings.watching.label_selectors.collect(Resource("", "v1", "pods"))
    labels = names.labels("m", "inference")
    wanted = dict(part.split("=") for part in selector.split(",") if "=" in part)
    assert wanted.items() <= labels.items() and names.MODEL_LABEL in selector
    imagemodels = Resource("kubediffusion.io", "v1alpha1", "imagemodels", kind="ImageModel")
    assert list(settings.watching.label_selectors.collect(imagemodels)) == []  # every model is watched
    assert settings.scanning.disabled and settings.persistence.finalizer == "kubediffusion.io/operator"


class ApplyCountingKube(FakeKube):
    def __init__(self, model: dict[str, Any]) -> None:
        super().__init__(model)
        self.applied: list[str] = []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj["kind"])
        return super().apply(obj)


def cached(kube: FakeKube) -> None:
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    kube.objects[("Job", "im-m-cache")]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}


def test_children_already_as_desired_are_not_applied_again() -> None:
    kube = ApplyCountingKube(model(TINY))
    run(kube, [])
    assert sorted(kube.applied) == ["Deployment", "Job", "PersistentVolumeClaim", "Service"]
    kube.applied.clear()
    run(kube, [])
    assert kube.applied == [], "a reconcile of an unchanged model writes nothing"
    cached(kube)
    run(kube, [])
    assert kube.applied == ["Deployment"], "only the child whose desired state changed (replicas 0 -> 1)"
    assert kube.objects[("Deployment", "im-m")]["spec"]["replicas"] == 1


def test_drift_of_a_child_is_applied_back_on_the_next_reconcile_of_any_kind() -> None:
    kube = ApplyCountingKube(model(TINY))
    run(kube, [])
    kube.objects[("Service", "im-m")]["spec"]["selector"] = {"app": "wrong"}  # someone else's edit
    kube.objects[("Deployment", "im-m")]["metadata"]["labels"].pop(names.MODEL_LABEL)
    kube.applied.clear()
    run(kube, [])
    assert sorted(kube.applied) == ["Deployment", "Service"]
    assert kube.objects[("Service", "im-m")]["spec"]["selector"] == names.selector("m")


def test_a_field_dropped_from_the_desired_child_is_applied_away() -> None:
    spec = {**TINY, "resources": {"gpus": 0, "nodeSelector": {"pool": "a"}}}
    kube = ApplyCountingKube(model(spec))
    run(kube, [])
    assert kube.objects[("Deployment", "im-m")]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a"}
    kube.objects[("ImageModel", "m")]["spec"] = TINY
    kube.applied.clear()
    run(kube, [])
    assert "Deployment" in kube.applied, "everything desired is still there, but the last apply had more"
    assert "nodeSelector" not in kube.objects[("Deployment", "im-m")]["spec"]["template"]["spec"]


class ListCountingKube(FakeKube):
    def __init__(self, model: dict[str, Any]) -> None:
        super().__init__(model)
        self.listed: list[dict[str, str]] = []

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        self.listed.append(selector)
        return super().list(kind, namespace, selector)


def test_the_pods_of_a_complete_cache_job_are_not_listed_again_once_the_status_has_their_summary() -> None:
    hf = {"source": {"huggingface": {"repo": "a/b"}}, "resources": {"gpus": 0}}
    kube = ListCountingKube(model(hf))
    run(kube, [])
    job = kube.objects[("Job", "im-m-cache")]
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T00:01:00Z"}
    summary = '{"revision": "deadbeef", "bytes": 1234}'
    kube.objects[("Pod", "im-m-cache-x")] = {
        "metadata": {"name": "im-m-cache-x", "labels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}},
        "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"message": summary}}}]},
    }
    by_job = {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}
    kube.listed.clear()
    run(kube, [])
    assert by_job in kube.listed, "the first look at the complete Job reads what its pod reported"
    cache = kube.objects[("ImageModel", "m")]["status"]["cache"]
    assert (cache["revision"], cache["bytes"]) == ("deadbeef", 1234)
    kube.listed.clear()
    run(kube, [])
    assert by_job not in kube.listed, "then the status has it: no list of pods that change no more"
    assert kube.objects[("ImageModel", "m")]["status"]["cache"] == cache
    kube.objects[("ImageModel", "m")]["status"]["cache"]["key"] = "another-copy"  # the status is of another copy
    kube.listed.clear()
    run(kube, [])
    assert by_job in kube.listed, "what the status says is not about this Job: read its pods"


class GetCountingKube(ApplyCountingKube):
    def __init__(self, model: dict[str, Any]) -> None:
        super().__init__(model)
        self.got: list[str] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.got.append(kind)
        return super().get(kind, namespace, name)


def test_a_new_model_applies_its_children_without_reading_each_first() -> None:
    kube = GetCountingKube(model(TINY))
    run(kube, [])
    assert kube.got == ["ImageModel", "Deployment", "Job"], "the Job is read to find a stale one"
    assert sorted(kube.applied) == ["Deployment", "Job", "PersistentVolumeClaim", "Service"]
    kube.got.clear()
    run(kube, [])
    assert sorted(kube.got) == sorted(["ImageModel", "Deployment", "PersistentVolumeClaim", "Job", "Service"])
