"""Status as a pure function of what one reconcile observed: PVC, Job, Deployment and pods in, status out.

kubebuilder-style: ``phase`` for humans and printer columns, ``conditions`` with stable reasons for
machines (:mod:`kubediffusion.imagemodel.status`). ``lastTransitionTime`` changes only when a
condition's status changes. Nothing here calls the API or reads the clock: ``now`` is passed in.

One reconcile feeds :func:`derive_status` once with an :class:`Observation` (what it read, what it
refused, what the API server refused to apply); the cache state in it is computed once, before the
Deployment is applied, because the Deployment's replicas depend on it.

Phases: Pending (nothing to do yet / waiting for a volume) → Caching (Job running) → Loading (pods
starting) → Ready; Degraded (something observed is wrong and may recover: pods crash, image pull,
unschedulable, a child the API server refuses); Failed (needs a spec or cluster change: bad spec, a
spec the operator refuses (image, download policy), a token Secret the kubelet cannot find, download failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import (
    AS_EXPECTED,
    AVAILABLE,
    CACHE_NOT_READY,
    CACHE_PENDING,
    DOWNLOADED,
    DOWNLOADING,
    INVALID_SPEC,
    PROGRESS_DEADLINE,
    PVC_NOT_FOUND,
    PVC_PENDING,
    READY,
    SCALED_TO_ZERO,
    SECRET_NOT_FOUND,
    STARTING,
    VOLUME_READY,
    CacheStatus,
    Condition,
    ConditionType,
    ImageModelStatus,
    LastFailure,
    Phase,
)
from kubediffusion.operator.problems import (
    UNBOUND_CLAIMS,
    Failure,
    Obj,
    condition_of,
    fetch_summary,
    is_true,
    job_failure,
    pod_problem,
    recovered_restart,
    short,
)
from kubediffusion.operator.problems import field as get
from kubediffusion.operator.resources import CacheVolume

WARNING_PHASES = frozenset({"Degraded", "Failed"})


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
    reason: str
    message: str
    ready: bool = False
    phase: Phase = "Pending"  # the model's phase while the cache is not ready
    failure: Failure | None = None
    info: CacheStatus | None = None


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile learned about one ImageModel: the only input of :func:`derive_status`."""

    name: str
    namespace: str
    generation: int
    spec: ImageModelSpec | None  # None: the spec could not be parsed
    children: Observed = field(default_factory=Observed)
    cache: CacheState | None = None  # None when nothing was applied
    refused: Failure | None = None  # the operator will not act on the spec
    rejected: Failure | None = None  # the API server refused to apply a child


@dataclass(frozen=True)
class _Verdict:
    phase: Phase
    conditions: tuple[Condition, ...]  # not yet stamped with a transition time and generation
    failure: Failure | None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def cache_state(
    spec: ImageModelSpec, volume: CacheVolume, observed: Observed, previous: CacheStatus | None = None
) -> CacheState:
    """Is the weights volume ready to mount read-only? (and why not)."""
    claim_name = volume.claim_name
    info = CacheStatus(claim_name=claim_name, path=volume.model_dir)
    claim = observed.claim
    if claim is None and not volume.owned:
        msg = f"PersistentVolumeClaim {claim_name} does not exist"
        return CacheState(PVC_NOT_FOUND, msg, failure=Failure(PVC_NOT_FOUND, msg), info=info)
    claim_pending = claim is None or get(claim, "status", "phase") != "Bound"
    if not spec.source.needs_fetch:
        if claim_pending:
            return CacheState(PVC_PENDING, f"PersistentVolumeClaim {claim_name} is not bound")
        return CacheState(VOLUME_READY, f"serving from PersistentVolumeClaim {claim_name}", ready=True, info=info)

    key = spec.source.cache_key()
    info = CacheStatus(claim_name=claim_name, path=volume.model_dir, key=key)
    job = observed.job
    prev = previous if previous is not None and previous.key == key else CacheStatus(claim_name=claim_name)
    if prev.completed_at and not is_true(job, "Complete") and not is_true(job, "Failed"):
        # These weights were cached before and the finished Job has been deleted since (by hand, or a
        # cleanup policy for finished Jobs): its re-run finds the marker at once. Pods keep serving meanwhile.
        info = info.model_copy(
            update={"revision": prev.revision, "bytes": prev.bytes, "completed_at": prev.completed_at}
        )
        msg = f"weights cached in {claim_name} (a new cache Job checks them)"
        return CacheState(DOWNLOADED, msg, ready=True, info=info)
    if job is None:
        return CacheState(CACHE_PENDING, "creating the cache Job", info=info)
    if is_true(job, "Complete"):
        summary = fetch_summary(observed.job_pods)
        revision = _str(summary["revision"]) if "revision" in summary else prev.revision
        info = info.model_copy(
            update={
                "revision": revision,
                "bytes": _int(summary["bytes"]) if "bytes" in summary else prev.bytes,
                "completed_at": _str(get(job, "status", "completionTime")) or prev.completed_at,
            }
        )
        detail = f" (revision {revision})" if revision else ""
        return CacheState(DOWNLOADED, f"weights cached in {claim_name}{detail}", ready=True, info=info)
    if is_true(job, "Failed"):
        failure = job_failure(job, observed.job_pods)
        return CacheState(failure.reason, failure.message, phase="Failed", failure=failure, info=info)
    problem = pod_problem(observed.job_pods)
    # A WaitForFirstConsumer claim stays Pending until the Job's pod is scheduled: a pod that cannot be
    # is the problem to report, unless the scheduler itself is waiting for the claim.
    if claim_pending and (problem is None or UNBOUND_CLAIMS in problem.message):
        msg = f"PersistentVolumeClaim {claim_name} is Pending (waiting for a volume)"
        return CacheState(PVC_PENDING, msg, info=info)
    if problem is not None:
        # A token Secret the kubelet cannot find needs someone to create it (Failed); the pod waits for it
        # and starts by itself once it exists. Everything else may pass (Degraded).
        phase: Phase = "Failed" if problem.reason == SECRET_NOT_FOUND else "Degraded"
        return CacheState(problem.reason, f"cache Job: {problem.message}", phase=phase, failure=problem, info=info)
    msg = f"cache Job {get(job, 'metadata', 'name')} is running"
    return CacheState(DOWNLOADING, msg, phase="Caching", info=info)


def _cond(type_: ConditionType, ok: bool, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=short(message))


def _stamp(cond: Condition, previous: ImageModelStatus, generation: int, now: str) -> Condition:
    prev = previous.condition(cond.type)
    since = prev.last_transition_time if prev is not None and prev.status == cond.status else None
    return cond.model_copy(update={"last_transition_time": since or now, "observed_generation": generation})


def derive_status(seen: Observation, *, previous: ImageModelStatus, now: str) -> ImageModelStatus:
    """The whole status from one reconcile's observations; ``previous`` keeps times and learned facts."""
    spec = seen.spec
    desired = spec.replicas if spec is not None else 0
    ready = int(get(seen.children.deployment, "status", "readyReplicas") or 0)
    cache: CacheStatus | None = None
    if seen.refused is not None or spec is None or seen.cache is None:
        verdict = _refused(seen.refused or Failure(INVALID_SPEC, "spec could not be parsed"), ready)
    else:
        cache = seen.cache.info
        verdict = _serving(spec, seen.cache, seen.children, ready)
        if seen.rejected is not None:
            verdict = _rejected(verdict, seen.rejected)
    return ImageModelStatus(
        phase=verdict.phase,
        observed_generation=seen.generation,
        source=spec.source.describe() if spec is not None else None,
        smoke_test=spec.is_smoke_test if spec is not None else None,
        endpoint=names.endpoint(seen.name, seen.namespace),
        replicas=desired,
        ready_replicas=ready,
        ready=f"{ready}/{desired}",
        cache=cache,
        last_failure=last_failure(verdict.failure, previous.last_failure, now),
        conditions=tuple(_stamp(c, previous, seen.generation, now) for c in verdict.conditions),
    )


def _refused(failure: Failure, ready: int) -> _Verdict:
    """A spec the operator refuses (nothing is applied).

    Pods of an earlier spec may still serve (``ready`` of them): Available says so, Ready does not.
    """
    reason, msg = failure.reason, failure.message
    available = _cond("Available", True, AVAILABLE, f"{ready} pod(s) of an earlier spec ready")
    conditions = (
        _cond("CacheReady", False, reason, msg),
        available if ready > 0 else _cond("Available", False, reason, msg),
        _cond("Ready", False, reason, msg),
        _cond("Degraded", True, reason, msg),
    )
    return _Verdict("Failed", conditions, failure)


def _rejected(verdict: _Verdict, rejected: Failure) -> _Verdict:
    """The API server refused a child (e.g. a shrunk claim): what runs keeps running, but the model is Degraded."""
    if verdict.phase == "Failed":
        return verdict
    degraded = _cond("Degraded", True, rejected.reason, rejected.message)
    conditions = tuple(degraded if c.type == "Degraded" else c for c in verdict.conditions)
    return _Verdict("Degraded", conditions, rejected)


def _serving(spec: ImageModelSpec, cache: CacheState, observed: Observed, ready: int) -> _Verdict:
    desired = spec.replicas
    if not cache.ready:
        failure = cache.failure
        degraded = (
            _cond("Degraded", True, failure.reason, failure.message)
            if failure is not None
            else _cond("Degraded", False, AS_EXPECTED, "")
        )
        conditions = (
            _cond("CacheReady", False, cache.reason, cache.message),
            _cond("Available", False, CACHE_NOT_READY, "pods are scaled to 0 until the cache is ready"),
            _cond("Ready", False, cache.reason, cache.message),
            degraded,
        )
        return _Verdict(cache.phase, conditions, failure)
    cache_cond = _cond("CacheReady", True, cache.reason, cache.message)
    not_degraded = _cond("Degraded", False, AS_EXPECTED, "")
    if desired == 0:
        msg = "spec.replicas is 0"
        conditions = (
            cache_cond,
            _cond("Available", False, SCALED_TO_ZERO, msg),
            _cond("Ready", False, SCALED_TO_ZERO, msg),
            not_degraded,
        )
        return _Verdict("Pending", conditions, None)
    dep = observed.deployment
    st = get(dep, "status") or {}
    progressing = condition_of(dep, "Progressing") or {}
    problem = pod_problem(observed.pods)
    if problem is None and progressing.get("reason") == PROGRESS_DEADLINE:
        problem = Failure(PROGRESS_DEADLINE, str(progressing.get("message") or "rollout stalled"))
    rolled_out = (
        dep is not None
        and int(st.get("observedGeneration") or 0) >= int(get(dep, "metadata", "generation") or 0)
        and int(get(dep, "spec", "replicas") or 0) == desired
        and int(st.get("updatedReplicas") or 0) >= desired
        and ready >= desired
        and int(st.get("replicas") or 0) == desired  # old pods of a rollout are gone
    )
    counted = f"{ready}/{desired} pods ready"
    available = _cond("Available", ready > 0, AVAILABLE if ready > 0 else STARTING, counted)
    if rolled_out and problem is None:
        conditions = (cache_cond, available, _cond("Ready", True, READY, counted), not_degraded)
        return _Verdict("Ready", conditions, recovered_restart(observed.pods))
    if problem is not None:
        conditions = (
            cache_cond,
            available,
            _cond("Ready", False, problem.reason, problem.message),
            _cond("Degraded", True, problem.reason, problem.message),
        )
        return _Verdict("Degraded", conditions, problem)
    loading = _cond("Ready", False, STARTING, f"{counted}; waiting for the model to load")
    return _Verdict("Loading", (cache_cond, available, loading, not_degraded), None)


def last_failure(failure: Failure | None, previous: LastFailure | None, now: str) -> LastFailure | None:
    """The most recent failure; kept after recovery, its time moves only when the failure changes."""
    if failure is None:
        return previous
    same = previous is not None and (previous.reason, previous.message) == (failure.reason, failure.message)
    since = previous.time if same and previous is not None else None
    return LastFailure(reason=failure.reason, message=failure.message, exit_code=failure.exit_code, time=since or now)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def transitions(previous: ImageModelStatus, current: ImageModelStatus) -> list[Event]:
    """Kubernetes Events worth posting between two statuses: a phase change, or a new failure reason."""
    old_phase, new_phase = previous.phase, current.phase
    failure, old_failure = current.last_failure, previous.last_failure
    warning = new_phase in WARNING_PHASES
    if new_phase != old_phase:
        if warning and failure is not None:
            return [Event("Warning", failure.reason, failure.message)]
        ready = current.condition("Ready")
        why = (ready.message or ready.reason) if ready is not None else ""
        return [Event("Normal", str(new_phase), f"{old_phase or 'New'} -> {new_phase}: {why}")]
    if warning and failure is not None and (old_failure is None or failure.reason != old_failure.reason):
        return [Event("Warning", failure.reason, failure.message)]
    return []
