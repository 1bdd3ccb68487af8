"""Status as a pure function of what was observed: Job, PVC, Deployment and pods in, status out.

kubebuilder-style: ``phase`` for humans and printer columns, ``conditions`` with stable reasons for
machines. ``lastTransitionTime`` changes only when a condition's status changes. Nothing here calls the
API or reads the clock: ``now`` is passed in.

Phases: Pending (nothing to do yet / waiting for a volume) → Caching (Job running) → Loading (pods
starting) → Ready; Degraded (something observed is wrong and may recover: pods crash, image pull,
unschedulable); Failed (needs a spec or cluster change: bad spec, missing Secret, download failed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.operator.resources import CacheVolume

Obj = Mapping[str, Any]
MAX_MESSAGE = 1024

# Stable condition reasons (documented contract: alerting and tests match on them).
INVALID_SPEC = "InvalidSpec"
UNKNOWN_PROFILE = "UnknownProfile"
SECRET_NOT_FOUND = "SecretNotFound"
PVC_NOT_FOUND = "PVCNotFound"
PVC_PENDING = "PVCPending"
CACHE_PENDING = "CachePending"
DOWNLOADING = "Downloading"
DOWNLOADED = "Downloaded"
VOLUME_READY = "VolumeReady"
DOWNLOAD_FAILED = "DownloadFailed"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
CONFIG_ERROR = "CreateContainerConfigError"
MODEL_LOAD_FAILED = "ModelLoadFailed"
CONTAINER_RESTARTED = "ContainerRestarted"
PROGRESS_DEADLINE = "ProgressDeadlineExceeded"
CACHE_NOT_READY = "CacheNotReady"
SCALED_TO_ZERO = "ScaledToZero"
STARTING = "PodsStarting"
AVAILABLE = "MinimumReplicasAvailable"
READY = "Ready"
AS_EXPECTED = "AsExpected"

# The scheduler's words for a pod whose Immediate-binding claim has no volume yet (PVCPending, not Unschedulable).
UNBOUND_CLAIMS = "unbound immediate PersistentVolumeClaims"

WARNING_PHASES = frozenset({"Degraded", "Failed"})


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Observed:
    """Children as read from the API server (None = absent)."""

    claim: Obj | None = None
    job: Obj | None = None
    job_pods: Sequence[Obj] = ()
    deployment: Obj | None = None
    pods: Sequence[Obj] = ()


@dataclass(frozen=True)
class CacheState:
    ready: bool
    reason: str
    message: str
    phase: str  # the model's phase while the cache is not ready
    failure: Failure | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _get(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _condition(obj: Obj | None, type_: str) -> Obj | None:
    for cond in _get(obj, "status", "conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: Obj | None, type_: str) -> bool:
    cond = _condition(obj, type_)
    return cond is not None and cond.get("status") == "True"


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _created(pod: Obj) -> str:
    return str(_get(pod, "metadata", "creationTimestamp") or "")


def pod_problem(pods: Sequence[Obj]) -> Failure | None:
    """The first thing a kubelet or scheduler reports as wrong with these pods, newest pod first."""
    for pod in sorted(pods, key=_created, reverse=True):
        if _get(pod, "metadata", "deletionTimestamp"):
            continue
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return Failure(UNSCHEDULABLE, _short(str(scheduled.get("message") or "no node fits the pod")))
        for status in _get(pod, "status", "containerStatuses") or []:
            waiting = _get(status, "state", "waiting") or {}
            reason = waiting.get("reason")
            if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                return Failure(IMAGE_PULL_BACK_OFF, _short(f"{reason}: {waiting.get('message') or ''}"))
            if reason == CONFIG_ERROR:
                return Failure(CONFIG_ERROR, _short(str(waiting.get("message") or reason)))
            last = _get(status, "lastState", "terminated")
            restarted = last and int(status.get("restartCount") or 0) > 0
            if reason == "CrashLoopBackOff" or (restarted and not status.get("ready")):
                detail = (last or {}).get("message") or (last or {}).get("reason") or "container restarted"
                code = (last or {}).get("exitCode")
                # A crash loop, or an exit the server itself explained as a load failure, is ModelLoadFailed;
                # a single crash of a serving container (OOM kill, node trouble) is a restart in progress.
                load_failed = reason == "CrashLoopBackOff" or str(detail).startswith(MODEL_LOAD_FAILED)
                return Failure(
                    MODEL_LOAD_FAILED if load_failed else CONTAINER_RESTARTED,
                    _short(f"container restarted {status.get('restartCount', 0)} time(s): {detail}"),
                    int(code) if code is not None else None,
                )
    return None


def recovered_restart(pods: Sequence[Obj]) -> Failure | None:
    """A container that crashed and is ready again: not a current problem, but worth ``lastFailure``."""
    for pod in sorted(pods, key=_created, reverse=True):
        for status in _get(pod, "status", "containerStatuses") or []:
            last = _get(status, "lastState", "terminated")
            if last and status.get("ready") and int(status.get("restartCount") or 0) > 0:
                detail = last.get("message") or last.get("reason") or "container exited"
                code = last.get("exitCode")
                return Failure(
                    CONTAINER_RESTARTED,
                    _short(
                        f"pod {_get(pod, 'metadata', 'name')} restarted {status.get('restartCount')} time(s) "
                        f"and recovered; last exit: {detail}"
                    ),
                    int(code) if code is not None else None,
                )
    return None


def _terminated(pod: Obj) -> Obj:
    for status in _get(pod, "status", "containerStatuses") or []:
        term = _get(status, "state", "terminated")
        if term:
            return dict(term)
    return {}


def _summary(pods: Sequence[Obj], phase: str) -> dict[str, Any]:
    """The JSON fetch-model writes to its termination message, from the newest pod in ``phase``."""
    for pod in sorted(pods, key=_created, reverse=True):
        if _get(pod, "status", "phase") == phase:
            try:
                value = json.loads(_terminated(pod).get("message") or "")
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def _job_failure(job: Obj, pods: Sequence[Obj]) -> Failure:
    for pod in sorted(pods, key=_created, reverse=True):
        if _get(pod, "status", "phase") != "Failed":
            continue
        term = _terminated(pod)
        message = str(term.get("message") or term.get("reason") or _get(pod, "status", "message") or "")
        try:  # fetch-model writes {"error": ...} as JSON
            parsed = json.loads(message)
            if isinstance(parsed, dict) and parsed.get("error"):
                message = str(parsed["error"])
        except ValueError:
            pass
        code = term.get("exitCode")
        if message:
            return Failure(DOWNLOAD_FAILED, _short(message), int(code) if code is not None else None)
    cond = _condition(job, "Failed") or {}
    return Failure(DOWNLOAD_FAILED, _short(f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"))


def cache_state(
    spec: ImageModelSpec, volume: CacheVolume, observed: Observed, previous: Obj | None = None
) -> CacheState:
    """Is the weights volume ready to mount read-only? (and why not)."""
    info: dict[str, Any] = {"claimName": volume.claim_name, "path": volume.model_dir}
    claim = observed.claim
    if claim is None and not volume.owned:
        msg = f"PersistentVolumeClaim {volume.claim_name} does not exist"
        return CacheState(False, PVC_NOT_FOUND, msg, "Pending", Failure(PVC_NOT_FOUND, msg), info)
    claim_pending = claim is None or _get(claim, "status", "phase") != "Bound"
    if not spec.source.needs_fetch:
        if claim_pending:
            return CacheState(False, PVC_PENDING, f"PersistentVolumeClaim {volume.claim_name} is not bound", "Pending")
        return CacheState(True, VOLUME_READY, f"serving from PersistentVolumeClaim {volume.claim_name}", "", None, info)

    key = spec.source.cache_key()
    info["key"] = key
    job = observed.job
    prev = previous if previous and previous.get("key") == key else {}
    if prev.get("completedAt") and not is_true(job, "Complete") and not is_true(job, "Failed"):
        # These weights were cached before and the finished Job has been deleted since (by hand, or a
        # cleanup policy for finished Jobs): its re-run finds the marker at once. Pods keep serving meanwhile.
        info.update({k: prev[k] for k in ("revision", "bytes", "completedAt") if k in prev})
        msg = f"weights cached in {volume.claim_name} (a new cache Job checks them)"
        return CacheState(True, DOWNLOADED, msg, "", None, info)
    if job is None:
        return CacheState(False, CACHE_PENDING, "creating the cache Job", "Pending", None, info)
    if is_true(job, "Complete"):
        summary = _summary(observed.job_pods, "Succeeded")
        for wire in ("revision", "bytes"):
            value = summary.get(wire, prev.get(wire))
            if value is not None:
                info[wire] = value
        completed = _get(job, "status", "completionTime") or prev.get("completedAt")
        if completed:
            info["completedAt"] = completed
        detail = f" (revision {info['revision']})" if info.get("revision") else ""
        return CacheState(True, DOWNLOADED, f"weights cached in {volume.claim_name}{detail}", "", None, info)
    if is_true(job, "Failed"):
        failure = _job_failure(job, observed.job_pods)
        return CacheState(False, failure.reason, failure.message, "Failed", failure, info)
    problem = pod_problem(observed.job_pods)
    # A WaitForFirstConsumer claim stays Pending until the Job's pod is scheduled: a pod that cannot be
    # is the problem to report, unless the scheduler itself is waiting for the claim.
    if claim_pending and (problem is None or UNBOUND_CLAIMS in problem.message):
        msg = f"PersistentVolumeClaim {volume.claim_name} is Pending (waiting for a volume)"
        return CacheState(False, PVC_PENDING, msg, "Pending", None, info)
    if problem is not None:
        return CacheState(False, problem.reason, f"cache Job: {problem.message}", "Degraded", problem, info)
    return CacheState(
        False, DOWNLOADING, f"cache Job {_get(job, 'metadata', 'name')} is running", "Caching", None, info
    )


def condition(
    type_: str, ok: bool, reason: str, message: str, *, generation: int, previous: Sequence[Obj], now: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = next((c for c in previous if c.get("type") == type_), None)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": _short(message),
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def failed_status(failure: Failure, ready: int = 0) -> tuple[str, list[tuple[str, bool, str, str]]]:
    """Phase and conditions for a spec the operator refuses (before anything is applied).

    Pods of an earlier spec may still serve (``ready`` of them): Available says so, Ready does not.
    """
    available = ("Available", True, AVAILABLE, f"{ready} pod(s) of an earlier spec ready")
    return "Failed", [
        ("CacheReady", False, failure.reason, failure.message),
        available if ready > 0 else ("Available", False, failure.reason, failure.message),
        ("Ready", False, failure.reason, failure.message),
        ("Degraded", True, failure.reason, failure.message),
    ]


def derive_status(
    spec: ImageModelSpec | None,
    *,
    name: str,
    namespace: str,
    generation: int,
    volume: CacheVolume | None,
    observed: Observed,
    refused: Failure | None,
    previous: Obj,
    now: str,
) -> dict[str, Any]:
    """The whole ``status`` from the observations (``refused``: the operator will not act on the spec)."""
    prev_conditions: Sequence[Obj] = previous.get("conditions") or []
    desired = spec.replicas if spec is not None else 0
    ready = int(_get(observed.deployment, "status", "readyReplicas") or 0)
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "source": spec.source.describe() if spec is not None else None,
        "smokeTest": spec.is_smoke_test if spec is not None else None,
        "endpoint": names.endpoint(name, namespace),
        "replicas": desired,
        "readyReplicas": ready,
        "ready": f"{ready}/{desired}",
    }
    failure: Failure | None
    if refused is not None or spec is None or volume is None:
        failure = refused or Failure(INVALID_SPEC, "spec could not be parsed")
        phase, conds = failed_status(failure, ready)
        out["cache"] = None
    else:
        cache = cache_state(spec, volume, observed, previous.get("cache"))
        out["cache"] = cache.info or None
        phase, conds, failure = _serving(spec, cache, observed, ready)
    out["phase"] = phase
    out["conditions"] = [
        condition(t, ok, reason, msg, generation=generation, previous=prev_conditions, now=now)
        for t, ok, reason, msg in conds
    ]
    out["lastFailure"] = last_failure(failure, previous.get("lastFailure"), now)
    return out


def _serving(
    spec: ImageModelSpec, cache: CacheState, observed: Observed, ready: int
) -> tuple[str, list[tuple[str, bool, str, str]], Failure | None]:
    desired = spec.replicas
    if not cache.ready:
        failure = cache.failure
        return (
            cache.phase,
            [
                ("CacheReady", False, cache.reason, cache.message),
                ("Available", False, CACHE_NOT_READY, "pods are scaled to 0 until the cache is ready"),
                ("Ready", False, cache.reason, cache.message),
                (
                    "Degraded",
                    failure is not None,
                    failure.reason if failure else AS_EXPECTED,
                    failure.message if failure else "",
                ),
            ],
            failure,
        )
    cache_cond = ("CacheReady", True, cache.reason, cache.message)
    if desired == 0:
        msg = "spec.replicas is 0"
        return (
            "Pending",
            [
                cache_cond,
                ("Available", False, SCALED_TO_ZERO, msg),
                ("Ready", False, SCALED_TO_ZERO, msg),
                ("Degraded", False, AS_EXPECTED, ""),
            ],
            None,
        )
    dep = observed.deployment
    st = _get(dep, "status") or {}
    progressing = _condition(dep, "Progressing") or {}
    problem = pod_problem(observed.pods)
    if problem is None and progressing.get("reason") == PROGRESS_DEADLINE:
        problem = Failure(PROGRESS_DEADLINE, str(progressing.get("message") or "rollout stalled"))
    rolled_out = (
        dep is not None
        and int(st.get("observedGeneration") or 0) >= int(_get(dep, "metadata", "generation") or 0)
        and int(_get(dep, "spec", "replicas") or 0) == desired
        and int(st.get("updatedReplicas") or 0) >= desired
        and ready >= desired
        and int(st.get("replicas") or 0) == desired  # old pods of a rollout are gone
    )
    available = ready > 0
    avail_cond = ("Available", available, AVAILABLE if available else STARTING, f"{ready}/{desired} pods ready")
    if rolled_out and problem is None:
        return (
            "Ready",
            [
                cache_cond,
                avail_cond,
                ("Ready", True, READY, f"{ready}/{desired} pods ready"),
                ("Degraded", False, AS_EXPECTED, ""),
            ],
            recovered_restart(observed.pods),
        )
    if problem is not None:
        return (
            "Degraded",
            [
                cache_cond,
                avail_cond,
                ("Ready", False, problem.reason, problem.message),
                ("Degraded", True, problem.reason, problem.message),
            ],
            problem,
        )
    return (
        "Loading",
        [
            cache_cond,
            avail_cond,
            ("Ready", False, STARTING, f"{ready}/{desired} pods ready; waiting for the model to load"),
            ("Degraded", False, AS_EXPECTED, ""),
        ],
        None,
    )


def last_failure(failure: Failure | None, previous: Obj | None, now: str) -> dict[str, Any] | None:
    """The most recent failure; kept after recovery, its time moves only when the failure changes."""
    if failure is None:
        return dict(previous) if previous else None
    same = previous and previous.get("reason") == failure.reason and previous.get("message") == failure.message
    return {
        "reason": failure.reason,
        "message": failure.message,
        "exitCode": failure.exit_code,
        "time": previous.get("time") if same and previous else now,
    }


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def transitions(previous: Obj, current: Obj) -> list[Event]:
    """Kubernetes Events worth posting between two statuses: a phase change, or a new failure reason."""
    old_phase, new_phase = previous.get("phase"), current.get("phase")
    failure = current.get("lastFailure") or {}
    old_failure = previous.get("lastFailure") or {}
    events: list[Event] = []
    if new_phase != old_phase:
        if new_phase in WARNING_PHASES and failure:
            events.append(Event("Warning", str(failure["reason"]), str(failure["message"])))
        else:
            ready = _ready_condition(current)
            events.append(Event("Normal", str(new_phase), f"{old_phase or 'New'} -> {new_phase}: {ready}"))
    elif new_phase in WARNING_PHASES and failure and failure.get("reason") != old_failure.get("reason"):
        events.append(Event("Warning", str(failure["reason"]), str(failure["message"])))
    return events


def _ready_condition(status: Obj) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("message") or cond.get("reason") or "")
    return ""
