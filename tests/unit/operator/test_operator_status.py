"""Status is a pure function of observations: tables of (observed children) -> (phase, reasons)."""

from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import ImageModelStatus
from kubediffusion.operator import status as st
from kubediffusion.operator.problems import Failure
from kubediffusion.operator.resources import cache_volume

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": spec})


# Shareable, so that two replicas on two nodes are fine and CacheReady keeps its download reason
# (a ReadWriteOnce cache with two replicas is CacheNotShareable: test_a_read_write_once_cache_...).
HF = parse({"source": {"huggingface": {"repo": "a/b"}}, "replicas": 2, "cache": {"accessMode": "ReadWriteMany"}})
PVC_SOURCE = parse({"source": {"pvc": {"claimName": "shared"}}})


def claim(phase: str = "Bound") -> dict[str, Any]:
    return {"metadata": {"name": "im-m-cache"}, "status": {"phase": phase}}


def job(condition: str | None = None, message: str = "") -> dict[str, Any]:
    conds = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded", "message": message}]
    out: dict[str, Any] = {"metadata": {"name": "im-m-cache"}, "status": {"conditions": conds if condition else []}}
    if condition == "Complete":
        out["status"]["completionTime"] = "2026-01-01T00:00:00Z"
    return out


def pod(
    *,
    phase: str = "Running",
    waiting: str | None = None,
    waiting_message: str = "",
    restarts: int = 0,
    last_message: str = "",
    exit_code: int = 1,
    terminated_message: str | None = None,
    unschedulable: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "c", "restartCount": restarts, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": waiting_message}}
    if restarts:
        cs["lastState"] = {"terminated": {"exitCode": exit_code, "reason": "Error", "message": last_message}}
    if terminated_message is not None:
        cs["state"] = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": terminated_message}}
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    return {
        "metadata": {"name": "p", "creationTimestamp": created},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": [] if unschedulable else [cs]},
    }


def deployment(ready: int, replicas: int = 2, updated: int | None = None, total: int | None = None) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "replicas": replicas if total is None else total,
        },
    }


def derive(
    spec: ImageModelSpec,
    observed: st.Observed,
    previous: ImageModelStatus | None = None,
    now: str = NOW,
    rejected: Failure | None = None,
) -> ImageModelStatus:
    """What reconcile does: the cache state once (before the Deployment), then the whole status once."""
    previous = previous or ImageModelStatus()
    cache = st.cache_state(spec, cache_volume(spec, "m"), observed, previous.cache)
    seen = st.Observation(
        name="m", namespace="ns", generation=3, spec=spec, children=observed, cache=cache, rejected=rejected
    )
    return st.derive_status(seen, previous=previous, now=now)


def refuse(
    failure: Failure, observed: st.Observed, generation: int = 1, spec: ImageModelSpec | None = None
) -> ImageModelStatus:
    seen = st.Observation(
        name="m", namespace="ns", generation=generation, spec=spec, children=observed, refused=failure
    )
    return st.derive_status(seen, previous=ImageModelStatus(), now=NOW)


def reasons(status: ImageModelStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


DONE = dict(claim=claim(), job=job("Complete"))
CONFIG = "CreateContainerConfigError"
# The kubelet's own messages (pkg/kubelet/kubelet_pods.go) for an env secretKeyRef it cannot resolve.
NO_SECRET = 'secret "hf" not found'
NO_KEY = "couldn't find key token in Secret ns/hf"
NO_CONFIG_MAP = 'configmap "settings" not found'
CASES: list[tuple[str, ImageModelSpec, st.Observed, str, dict[str, tuple[str, str]]]] = [
    ("nothing yet", HF, st.Observed(claim=claim("Pending")), "Pending", {"CacheReady": ("False", "CachePending")}),
    (
        "pvc pending",
        HF,
        st.Observed(claim=claim("Pending"), job=job()),
        "Pending",
        {"CacheReady": ("False", "PVCPending")},
    ),
    (
        "downloading",
        HF,
        st.Observed(claim=claim(), job=job(), job_pods=[pod()]),
        "Caching",
        {
            "CacheReady": ("False", "Downloading"),
            "Available": ("False", "CacheNotReady"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "download failed",
        HF,
        st.Observed(
            claim=claim(),
            job=job("Failed", "Job has reached the specified backoff limit"),
            job_pods=[pod(phase="Failed", terminated_message='{"error": "GET https://x/m.tar: HTTP 404 Not Found"}')],
        ),
        "Failed",
        {"CacheReady": ("False", "DownloadFailed"), "Degraded": ("True", "DownloadFailed")},
    ),
    (
        "job pod cannot pull",
        HF,
        st.Observed(claim=claim(), job=job(), job_pods=[pod(phase="Pending", waiting="ImagePullBackOff")]),
        "Degraded",
        {"CacheReady": ("False", "ImagePullBackOff"), "Degraded": ("True", "ImagePullBackOff")},
    ),
    (
        "job pod unschedulable",
        HF,
        st.Observed(claim=claim(), job=job(), job_pods=[pod(phase="Pending", unschedulable="0/3 nodes")]),
        "Degraded",
        {"CacheReady": ("False", "Unschedulable")},
    ),
    (
        "job pod unschedulable while its WaitForFirstConsumer claim waits for it",
        HF,
        st.Observed(
            claim=claim("Pending"),
            job=job(),
            job_pods=[pod(phase="Pending", unschedulable="0/3 nodes are available: 3 node(s) didn't match selector")],
        ),
        "Degraded",
        {"CacheReady": ("False", "Unschedulable"), "Degraded": ("True", "Unschedulable")},
    ),
    (
        "job pod waits for its immediate claim",
        HF,
        st.Observed(
            claim=claim("Pending"),
            job=job(),
            job_pods=[
                pod(phase="Pending", unschedulable="0/3 nodes: pod has unbound immediate PersistentVolumeClaims")
            ],
        ),
        "Pending",
        {"CacheReady": ("False", "PVCPending"), "Degraded": ("False", "AsExpected")},
    ),
    (
        "loading",
        HF,
        st.Observed(**DONE, deployment=deployment(0), pods=[pod(), pod()]),
        "Loading",
        {
            "CacheReady": ("True", "Downloaded"),
            "Available": ("False", "PodsStarting"),
            "Ready": ("False", "PodsStarting"),
        },
    ),
    (
        "one of two ready",
        HF,
        st.Observed(**DONE, deployment=deployment(1), pods=[pod(), pod()]),
        "Loading",
        {"Available": ("True", "MinimumReplicasAvailable"), "Ready": ("False", "PodsStarting")},
    ),
    (
        "ready",
        HF,
        st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()]),
        "Ready",
        {
            "CacheReady": ("True", "Downloaded"),
            "Available": ("True", "MinimumReplicasAvailable"),
            "Ready": ("True", "Ready"),
            "Degraded": ("False", "AsExpected"),
        },
    ),
    (
        "rolling out",
        HF,
        st.Observed(**DONE, deployment=deployment(2, updated=1, total=3), pods=[pod()]),
        "Loading",
        {"Ready": ("False", "PodsStarting")},
    ),
    (
        "crash loop",
        HF,
        st.Observed(
            **DONE,
            deployment=deployment(0),
            pods=[pod(waiting="CrashLoopBackOff", restarts=3, last_message="OSError: no file named model_index.json")],
        ),
        "Degraded",
        {"Ready": ("False", "ModelLoadFailed"), "Degraded": ("True", "ModelLoadFailed")},
    ),
    (
        "image pull",
        HF,
        st.Observed(**DONE, deployment=deployment(0), pods=[pod(phase="Pending", waiting="ErrImagePull")]),
        "Degraded",
        {"Degraded": ("True", "ImagePullBackOff")},
    ),
    (
        "unschedulable",
        HF,
        st.Observed(
            **DONE,
            deployment=deployment(0),
            pods=[pod(phase="Pending", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")],
        ),
        "Degraded",
        {"Degraded": ("True", "Unschedulable")},
    ),
    (
        "config error",
        HF,
        st.Observed(
            **DONE, deployment=deployment(0), pods=[pod(phase="Pending", waiting="CreateContainerConfigError")]
        ),
        "Degraded",
        {"Degraded": ("True", "CreateContainerConfigError")},
    ),
    (
        "job pod's token Secret does not exist",
        HF,
        st.Observed(
            claim=claim(), job=job(), job_pods=[pod(phase="Pending", waiting=CONFIG, waiting_message=NO_SECRET)]
        ),
        "Failed",
        {"CacheReady": ("False", "SecretNotFound"), "Degraded": ("True", "SecretNotFound")},
    ),
    (
        "job pod's token Secret lacks the key",
        HF,
        st.Observed(claim=claim(), job=job(), job_pods=[pod(phase="Pending", waiting=CONFIG, waiting_message=NO_KEY)]),
        "Failed",
        {"CacheReady": ("False", "SecretNotFound"), "Ready": ("False", "SecretNotFound")},
    ),
    (
        "job pod's config map does not exist",
        HF,
        st.Observed(
            claim=claim(), job=job(), job_pods=[pod(phase="Pending", waiting=CONFIG, waiting_message=NO_CONFIG_MAP)]
        ),
        "Degraded",
        {"CacheReady": ("False", "CreateContainerConfigError")},
    ),
    (
        "scaled to zero",
        parse({"source": {"huggingface": {"repo": "a/b"}}, "replicas": 0}),
        st.Observed(**DONE, deployment=deployment(0, replicas=0)),
        "Pending",
        {"Available": ("False", "ScaledToZero"), "Ready": ("False", "ScaledToZero")},
    ),
    (
        "pvc source bound",
        PVC_SOURCE,
        st.Observed(claim=claim(), deployment=deployment(1, replicas=1), pods=[pod()]),
        "Ready",
        {"CacheReady": ("True", "VolumeReady")},
    ),
    ("pvc source missing", PVC_SOURCE, st.Observed(), "Pending", {"CacheReady": ("False", "PVCNotFound")}),
    (
        "pvc source pending",
        PVC_SOURCE,
        st.Observed(claim=claim("Pending")),
        "Pending",
        {"CacheReady": ("False", "PVCPending")},
    ),
]


@pytest.mark.parametrize(("case", "spec", "observed", "phase", "expected"), CASES, ids=[c[0] for c in CASES])
def test_phase_and_condition_reasons(
    case: str, spec: ImageModelSpec, observed: st.Observed, phase: str, expected: dict[str, tuple[str, str]]
) -> None:
    status = derive(spec, observed)
    assert status.phase == phase
    got = reasons(status)
    assert {k: got[k] for k in expected} == expected
    assert {c.type for c in status.conditions} == {"CacheReady", "Available", "Ready", "Degraded"}
    assert all(c.observed_generation == 3 for c in status.conditions)


def test_download_failure_carries_the_fetch_error_message_and_exit_code() -> None:
    observed = st.Observed(
        claim=claim(),
        job=job("Failed"),
        job_pods=[pod(phase="Failed", terminated_message='{"error": "GET https://x/m.tar: HTTP 404 Not Found"}')],
    )
    status = derive(HF, observed)
    assert status.last_failure is not None
    assert status.last_failure.reason == "DownloadFailed"
    assert status.last_failure.message == "GET https://x/m.tar: HTTP 404 Not Found"
    assert status.last_failure.exit_code == 1
    cache_cond = status.condition("CacheReady")
    assert cache_cond is not None and "HTTP 404" in cache_cond.message


def test_model_load_failure_shows_the_last_termination_message() -> None:
    observed = st.Observed(
        **DONE,
        deployment=deployment(0),
        pods=[pod(waiting="CrashLoopBackOff", restarts=2, exit_code=3, last_message="CUDA out of memory")],
    )
    status = derive(HF, observed)
    assert status.last_failure is not None
    assert "CUDA out of memory" in status.last_failure.message
    assert status.last_failure.exit_code == 3


def test_cache_info_comes_from_the_fetch_summary() -> None:
    summary = '{"source":"hf:a/b@main","revision":"deadbeef","bytes":1234,"completedAt":"2026-01-01T00:00:00Z"}'
    observed = st.Observed(
        claim=claim(), job=job("Complete"), job_pods=[pod(phase="Succeeded", terminated_message=summary)]
    )
    status = derive(HF, observed)
    assert status.cache is not None
    assert status.cache.revision == "deadbeef" and status.cache.bytes == 1234
    assert status.cache.claim_name == "im-m-cache" and status.cache.completed_at
    # The Job's pods were garbage-collected: the previous status keeps what was learned.
    again = derive(HF, st.Observed(claim=claim(), job=job("Complete")), previous=status)
    assert again.cache is not None and again.cache.revision == "deadbeef"


def test_status_fields_for_printer_columns_and_router() -> None:
    status = derive(HF, st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()]))
    assert status.endpoint == "http://im-m.ns.svc:8000"
    assert status.ready == "2/2" and status.ready_replicas == 2 and status.replicas == 2
    assert status.source == "hf:a/b@main" and status.observed_generation == 3
    # ... under the wire names of the CRD's status schema (printer columns read .status.ready etc.)
    wire = status.wire()
    assert {"endpoint", "ready", "readyReplicas", "replicas", "source", "observedGeneration", "smokeTest"} <= set(wire)
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} == set(
        wire["conditions"][0]
    )


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    first = derive(HF, st.Observed(**DONE, deployment=deployment(0), pods=[pod()]))
    same = derive(HF, st.Observed(**DONE, deployment=deployment(1), pods=[pod()]), previous=first, now=LATER)
    ready = {c.type: c for c in same.conditions}
    before = {c.type: c for c in first.conditions}
    assert ready["CacheReady"].last_transition_time == NOW  # still True
    assert ready["Ready"].last_transition_time == NOW  # still False (reason unchanged too)
    assert ready["Available"].last_transition_time == LATER  # False -> True
    assert before["Available"].status == "False"


def test_refused_spec_is_failed_with_the_reason_everywhere() -> None:
    failure = Failure("ImageNotAllowed", "spec.image 'evil/x' is not allowed")
    status = refuse(failure, st.Observed(), spec=HF)
    assert status.phase == "Failed"
    assert reasons(status)["CacheReady"] == ("False", "ImageNotAllowed")
    assert reasons(status)["Degraded"] == ("True", "ImageNotAllowed")
    assert status.last_failure is not None and status.last_failure.message == "spec.image 'evil/x' is not allowed"
    assert reasons(status)["Available"] == ("False", "ImageNotAllowed")


def test_a_token_secret_the_kubelet_cannot_find_is_secret_not_found_until_the_pod_starts() -> None:
    waiting = st.Observed(
        claim=claim(), job=job(), job_pods=[pod(phase="Pending", waiting=CONFIG, waiting_message=NO_KEY)]
    )
    status = derive(HF, waiting)
    assert status.phase == "Failed" and status.last_failure is not None
    assert status.last_failure.reason == "SecretNotFound" and NO_KEY in status.last_failure.message
    assert [e.reason for e in st.transitions(ImageModelStatus(), status)] == ["SecretNotFound"]
    # Once the Secret exists the kubelet starts the container by itself: no edit of the model needed.
    started = derive(HF, st.Observed(claim=claim(), job=job(), job_pods=[pod()]), previous=status, now=LATER)
    assert started.phase == "Caching" and reasons(started)["Degraded"] == ("False", "AsExpected")
    assert reasons(started)["CacheReady"] == ("False", "Downloading")


def test_an_unparsable_spec_is_failed_without_source_or_cache() -> None:
    status = refuse(Failure("InvalidSpec", "spec.replicas: too big"), st.Observed())
    assert status.phase == "Failed" and reasons(status)["Ready"] == ("False", "InvalidSpec")
    assert status.source is None and status.cache is None and status.replicas == 0
    assert {"source", "cache", "smokeTest"}.isdisjoint(status.wire())


def test_refused_spec_still_reports_the_pods_an_earlier_spec_left_serving() -> None:
    # Nothing new is applied for a refused spec, but the Deployment of the last good one keeps serving.
    status = refuse(
        Failure("DownloadRefused", "plain http is not allowed"),
        st.Observed(deployment=deployment(2)),
        generation=2,
        spec=HF,
    )
    assert status.phase == "Failed" and status.ready == "2/2" and status.ready_replicas == 2
    assert reasons(status)["Available"] == ("True", "MinimumReplicasAvailable")
    assert reasons(status)["Ready"] == ("False", "DownloadRefused")


@pytest.mark.parametrize("job_now", [None, job()], ids=["job deleted", "job re-created"])
def test_deleting_the_finished_cache_job_keeps_the_model_serving(job_now: dict[str, Any] | None) -> None:
    # A cleanup policy (or a person) deletes finished Jobs: the operator re-creates it, and it finds the
    # marker at once; the pods must not be scaled to 0 meanwhile.
    ready = derive(HF, st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()]))
    assert ready.phase == "Ready" and ready.cache is not None
    cache = st.cache_state(HF, cache_volume(HF, "m"), st.Observed(claim=claim(), job=job_now), ready.cache)
    assert cache.ready and cache.reason == "Downloaded"
    assert cache.info is not None and cache.info.completed_at == ready.cache.completed_at
    after = derive(HF, st.Observed(claim=claim(), job=job_now, deployment=deployment(2)), previous=ready)
    assert after.phase == "Ready" and reasons(after)["CacheReady"] == ("True", "Downloaded")
    # ... but a new source is a new download: nothing to keep serving from.
    other = parse({"source": {"huggingface": {"repo": "a/c"}}, "replicas": 2})
    assert not st.cache_state(other, cache_volume(other, "m"), st.Observed(claim=claim()), ready.cache).ready
    # ... and a failed re-run is a failure.
    failed = st.Observed(claim=claim(), job=job("Failed", "BackoffLimitExceeded"))
    assert not st.cache_state(HF, cache_volume(HF, "m"), failed, ready.cache).ready


def test_last_failure_is_kept_after_recovery() -> None:
    failed = derive(
        HF, st.Observed(**DONE, deployment=deployment(0), pods=[pod(phase="Pending", waiting="ErrImagePull")])
    )
    healed = derive(HF, st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()]), previous=failed, now=LATER)
    assert healed.phase == "Ready"
    assert healed.last_failure == failed.last_failure and healed.last_failure is not None


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        ({}, {"phase": "Pending"}, [("Normal", "Pending")]),
        ({"phase": "Loading"}, {"phase": "Ready"}, [("Normal", "Ready")]),
        ({"phase": "Ready"}, {"phase": "Ready"}, []),
        (
            {"phase": "Caching"},
            {"phase": "Failed", "lastFailure": {"reason": "DownloadFailed", "message": "404"}},
            [("Warning", "DownloadFailed")],
        ),
        (
            {"phase": "Degraded", "lastFailure": {"reason": "Unschedulable", "message": "x"}},
            {"phase": "Degraded", "lastFailure": {"reason": "ImagePullBackOff", "message": "y"}},
            [("Warning", "ImagePullBackOff")],
        ),
        (
            {"phase": "Degraded", "lastFailure": {"reason": "Unschedulable", "message": "x"}},
            {"phase": "Degraded", "lastFailure": {"reason": "Unschedulable", "message": "x"}},
            [],
        ),
    ],
)
def test_events_on_transitions(
    previous: dict[str, Any], current: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    events = st.transitions(ImageModelStatus.parse(previous), ImageModelStatus.parse(current))
    assert [(e.type, e.reason) for e in events] == expected


def test_a_crash_that_recovered_keeps_the_model_ready_and_is_recorded_as_last_failure() -> None:
    recovered = pod(restarts=1, exit_code=137, last_message="")
    recovered["status"]["containerStatuses"][0]["ready"] = True
    status = derive(HF, st.Observed(**DONE, deployment=deployment(2), pods=[recovered, pod()]))
    assert status.phase == "Ready" and status.last_failure is not None
    assert status.last_failure.reason == "ContainerRestarted" and status.last_failure.exit_code == 137
    assert "recovered" in status.last_failure.message


def test_a_restarted_container_that_is_not_ready_again_is_a_current_problem() -> None:
    crashed = pod(restarts=1, exit_code=137, last_message="")  # restarted, not ready (yet)
    status = derive(HF, st.Observed(**DONE, deployment=deployment(1), pods=[crashed, pod()]))
    assert status.phase == "Degraded" and status.last_failure is not None
    assert status.last_failure.reason == "ContainerRestarted"
    load_failed = pod(restarts=1, exit_code=1, last_message="ModelLoadFailed: no model_index.json in /models")
    status = derive(HF, st.Observed(**DONE, deployment=deployment(1), pods=[load_failed, pod()]))
    assert status.phase == "Degraded" and status.last_failure is not None
    assert status.last_failure.reason == "ModelLoadFailed"


def test_a_rejected_apply_degrades_the_model_and_keeps_what_serves() -> None:
    shrink = Failure("ApplyRejected", "PersistentVolumeClaim im-m-cache: spec.resources.requests.storage: Forbidden")
    serving = st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()])
    status = derive(HF, serving, rejected=shrink)
    assert status.phase == "Degraded"
    assert reasons(status) == {
        "CacheReady": ("True", "Downloaded"),
        "Available": ("True", "MinimumReplicasAvailable"),
        "Ready": ("True", "Ready"),
        "Degraded": ("True", "ApplyRejected"),
    }
    assert status.last_failure is not None and status.last_failure.message == shrink.message
    # A failed download stays Failed: the rejection does not hide it.
    broken = st.Observed(claim=claim(), job=job("Failed", "BackoffLimitExceeded"))
    failed = derive(HF, broken, rejected=shrink)
    assert failed.phase == "Failed" and reasons(failed)["Degraded"] == ("True", "DownloadFailed")


def test_a_rejection_that_persists_leaves_the_status_unchanged() -> None:
    # Derived once with the rejection (not patched in afterwards): the Degraded condition's transition
    # time and lastFailure's time stay put, so reconciling again writes nothing.
    shrink = Failure("ApplyRejected", "PersistentVolumeClaim im-m-cache: field is immutable")
    serving = st.Observed(**DONE, deployment=deployment(2), pods=[pod(), pod()])
    first = derive(HF, serving, rejected=shrink)
    again = derive(HF, serving, previous=first, now=LATER, rejected=shrink)
    assert again == first
    degraded = again.condition("Degraded")
    assert degraded is not None and degraded.last_transition_time == NOW
    healed = derive(HF, serving, previous=again, now=LATER)
    assert healed.phase == "Ready" and healed.last_failure == first.last_failure


def test_an_unchanged_world_derives_an_equal_status() -> None:
    for _, spec, observed, _, _ in CASES:
        first = derive(spec, observed)
        assert derive(spec, observed, previous=first, now=LATER) == first


def test_a_new_source_drops_the_cache_details_of_the_old_one() -> None:
    summary = '{"revision":"deadbeef","bytes":1234}'
    done = st.Observed(
        claim=claim(), job=job("Complete"), job_pods=[pod(phase="Succeeded", terminated_message=summary)]
    )
    old = derive(HF, done)
    assert old.cache is not None and old.cache.revision == "deadbeef"
    # scaleToZero (nothing serves meanwhile): the new source's cache has none of the old one's details.
    other = parse({"source": {"huggingface": {"repo": "a/c"}}, "replicas": 2, "cache": {"swap": "scaleToZero"}})
    new = derive(other, st.Observed(claim=claim(), job=job(), job_pods=[pod()]), previous=old)
    assert new.cache is not None and new.cache.key != old.cache.key
    # The applied status simply has no such field: server-side apply removes what we stop applying.
    assert set(new.wire()["cache"]) == {"claimName", "path", "key"}
    # Side by side, the old copy's details are those of the copy that serves until the new one is complete ...
    beside = parse({"source": {"huggingface": {"repo": "a/c"}}, "replicas": 2})
    swapping = derive(beside, st.Observed(claim=claim(), job=job(), job_pods=[pod()]), previous=old)
    assert swapping.cache is not None and swapping.cache.revision == "deadbeef" and swapping.cache.pending
    # ... and gone once it is (only where it lies stays, as retiring, until the pods have left it).
    summary = '{"revision":"cafe"}'
    done = st.Observed(
        claim=claim(), job=job("Complete"), job_pods=[pod(phase="Succeeded", terminated_message=summary)]
    )
    swapped = derive(beside, done, previous=swapping)
    assert swapped.wire()["cache"] == {
        **{k: v for k, v in swapped.wire()["cache"].items() if k in ("claimName", "path", "key", "completedAt")},
        "revision": "cafe",
        "retiring": {"key": old.cache.key, "path": old.cache.path},
    }
    pvc = derive(PVC_SOURCE, st.Observed(claim=claim(), deployment=deployment(1, replicas=1), pods=[pod()]), old)
    assert pvc.wire()["cache"] == {"claimName": "shared", "path": "/models"}


def test_a_failure_without_exit_code_has_no_exit_code_on_the_wire() -> None:
    status = derive(
        HF, st.Observed(**DONE, deployment=deployment(0), pods=[pod(phase="Pending", waiting="ErrImagePull")])
    )
    assert status.wire()["lastFailure"] == {"reason": "ImagePullBackOff", "message": "ErrImagePull:", "time": NOW}


def test_a_stored_status_that_does_not_parse_counts_as_absent_field_by_field() -> None:
    stored = {
        "phase": "Exploded",  # not a phase
        "lastFailure": {"reason": "DownloadFailed", "message": "x", "time": "t"},
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}],
        "kopf": {"progress": {}},  # someone else's field: ignored
    }
    parsed = ImageModelStatus.parse(stored)
    assert parsed.phase is None
    assert parsed.last_failure is not None and parsed.last_failure.reason == "DownloadFailed"
    ready = parsed.condition("Ready")
    assert ready is not None and ready.ok and ready.last_transition_time == "t0"
    assert ImageModelStatus.parse(None) == ImageModelStatus() == ImageModelStatus.parse("junk")
