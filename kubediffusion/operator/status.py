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

from dataclasses import dataclass, field

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import (
    AS_EXPECTED,
    AVAILABLE,
    CACHE_NOT_READY,
    INVALID_SPEC,
    PROGRESS_DEADLINE,
    READY,
    SCALED_TO_ZERO,
    STARTING,
    CacheStatus,
    Condition,
    ConditionType,
    ImageModelStatus,
    LastFailure,
    Phase,
)
from kubediffusion.operator.cache import CacheState, cache_state
from kubediffusion.operator.observed import Observed
from kubediffusion.operator.problems import (
    Failure,
    condition_of,
    pod_problem,
    recovered_restart,
    short,
)
from kubediffusion.operator.problems import field as get

__all__ = ["CacheState", "Event", "Observation", "Observed", "cache_state", "derive_status", "transitions"]

WARNING_PHASES = frozenset({"Degraded", "Failed"})


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


def _cond(type_: ConditionType, ok: bool, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=short(message))


def _stamp(cond: Condition, previous: ImageModelStatus, generation: int, now: str) -> Condition:
    prev = previous.condition(cond.type)
    since = prev.last_transition_time if prev is not None and prev.status == cond.status else None
    return cond.model_copy(update={"last_transition_time": since or now, "observed_generation": generation})


def derive_status(seen: Observation, *, previous: ImageModelStatus, now: str) -> ImageModelStatus:
    """The whole status from one reconcile's observations; ``previous`` keeps times and learned facts."""
    spec = seen.spec
    desired = spec.desired_replicas if spec is not None else 0
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
        source=spec.describe() if spec is not None else None,
        smoke_test=spec.is_smoke_test if spec is not None else None,
        endpoint=names.endpoint(seen.name, seen.namespace),
        replicas=desired,
        ready_replicas=ready,
        ready=f"{ready}/{desired}",
        selector=names.selector_string(seen.name),
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
    verdict = _pods(spec, cache, observed, ready)
    failure = cache.failure
    if not cache.serves or failure is None or verdict.phase == "Failed":
        return verdict
    # New weights could not be fetched while an older copy serves: the model keeps serving it, Degraded.
    replaced = {"Ready": _cond("Ready", False, failure.reason, failure.message),
                "Degraded": _cond("Degraded", True, failure.reason, failure.message)}  # fmt: skip
    return _Verdict("Degraded", tuple(replaced.get(c.type, c) for c in verdict.conditions), failure)


def _pods(spec: ImageModelSpec, cache: CacheState, observed: Observed, ready: int) -> _Verdict:
    desired = spec.desired_replicas
    if not cache.serves:
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
    cache_cond = _cond("CacheReady", cache.failure is None, cache.reason, cache.message)
    not_degraded = _cond("Degraded", False, AS_EXPECTED, "")
    if desired == 0:
        msg = "scaled to zero by the autoscaler; a request wakes it" if spec.autoscaling else "spec.replicas is 0"
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
    waiting = "the model to load" if spec.needs_weights else f"engine {spec.engine.name} to answer"
    loading = _cond("Ready", False, STARTING, f"{counted}; waiting for {waiting}")
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
