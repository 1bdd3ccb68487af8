"""The weights cache of one model: which copy the spec wants, which one serves meanwhile, and is it ready.

Pure functions of the spec, the previous status and what one reconcile observed; no API, no clock.

Shared mode (one claim, filled by the cache Job). Every source has a directory of its own,
``/models/<cache-key>``, so a new source is downloaded beside the copy that serves (:func:`plan_cache`):
the Deployment keeps reading the old directory until the new copy is complete, then rolls to it. The
old copy is ``retiring`` until that rollout is complete (no pod of the old template left); then the
cache Job's keep-list no longer names it, the Job is replaced, runs once more (nothing to download)
and prunes it. ``status.cache`` is the memory between reconciles: key, path and revision of the copy
the pods are pointed at, ``pending`` (downloading beside it), ``retiring`` (being left).
``spec.cache.swap: scaleToZero`` is the old way: nothing serves meanwhile, and the Job prunes the old
copy before downloading, so one copy's room is enough. A volume too small for two copies is the Job's
``CacheTooSmallForSwap`` (:mod:`kubediffusion.fetch.copies`): the old copy keeps serving.

A model cached before side-by-side swaps keeps its directory (``/models/model``) until its source changes.

perNode mode: no claim and no Job; each pod fills its own generic ephemeral volume in an init container,
so the weights are ready when pods are, and the revision is what a ready pod's init container reported.

An engine other than diffusers reads no weights of ours: its cache is ``NotNeeded`` (ready, no volume).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import (
    CACHE_NOT_SHAREABLE,
    CACHE_PENDING,
    DOWNLOADED,
    DOWNLOADING,
    NOT_NEEDED,
    PER_NODE_CACHE,
    PVC_NOT_FOUND,
    PVC_PENDING,
    SECRET_NOT_FOUND,
    SWAPPING,
    VOLUME_READY,
    CacheCopy,
    CacheStatus,
    Phase,
)
from kubediffusion.operator.observed import Observed
from kubediffusion.operator.parts import CacheVolume, pinned_to_one_node
from kubediffusion.operator.problems import (
    UNBOUND_CLAIMS,
    Failure,
    Obj,
    fetch_summaries,
    fetch_summary,
    is_true,
    job_failure,
    pod_problem,
)
from kubediffusion.operator.problems import field as get


@dataclass(frozen=True)
class CachePlan:
    """Where the spec's source goes, what serves until it is there, and what the cache Job must keep."""

    target: CacheCopy
    serving: CacheCopy | None = None  # a complete older copy the pods read until the target is ready
    retiring: CacheCopy | None = None  # the copy a rollout is still leaving
    keep: tuple[str, ...] = ()  # directories the cache Job must not prune (pods read them)


@dataclass(frozen=True)
class CacheState:
    reason: str
    message: str
    ready: bool = False  # the copy the spec asks for is complete
    phase: Phase = "Pending"  # the model's phase while nothing can serve
    failure: Failure | None = None
    info: CacheStatus | None = None
    serving: CacheCopy | None = None  # not ready, but this older copy keeps serving (a side-by-side swap)

    @property
    def serves(self) -> bool:
        """Whether pods may run (the Deployment is scaled to 0 otherwise)."""
        return self.ready or self.serving is not None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rolled_out_to(deployment: Obj | None, copy: CacheCopy) -> bool:
    """Every pod of ``deployment`` runs a template pointed at ``copy`` (none of an older template is left)."""
    if deployment is None:
        return False
    annotations = get(deployment, "spec", "template", "metadata", "annotations") or {}
    status = get(deployment, "status") or {}
    total = int(status.get("replicas") or 0)
    return (
        annotations.get(names.CACHE_PATH_ANNOTATION) == copy.path
        and int(status.get("observedGeneration") or 0) >= int(get(deployment, "metadata", "generation") or 0)
        and int(status.get("updatedReplicas") or 0) == total
        and total == int(get(deployment, "spec", "replicas") or 0)
    )


def plan_cache(spec: ImageModelSpec, previous: CacheStatus | None, deployment: Obj | None) -> CachePlan:
    """The copies of a shared cache for this spec, given what the last status remembered."""
    key = spec.weights_key()
    done = previous is not None and bool(previous.completed_at and previous.key and previous.path)
    prev = previous if done and previous is not None else None
    same = prev is not None and prev.key == key
    kept_path = prev.path if same and prev is not None else None  # e.g. /models/model of an older operator
    target = CacheCopy(key=key, path=kept_path or names.cache_dir(key))
    serving = None
    side_by_side = spec.cache.swap == "sideBySide"
    if side_by_side and prev is not None and not same and prev.key and prev.path and prev.path != target.path:
        serving = CacheCopy(key=prev.key, path=prev.path)
    retiring = previous.retiring if previous is not None else None
    if retiring is not None:
        current = serving or target
        if retiring.path in (target.path, current.path) or rolled_out_to(deployment, current):
            retiring = None
    keep = tuple(sorted({c.path for c in (serving, retiring) if c is not None and c.path != target.path}))
    return CachePlan(target=target, serving=serving, retiring=retiring, keep=keep)


def cache_state(
    spec: ImageModelSpec,
    volume: CacheVolume,
    observed: Observed,
    previous: CacheStatus | None = None,
    plan: CachePlan | None = None,
) -> CacheState:
    """Can pods read weights, which copy, and why not?"""
    if not spec.needs_weights:
        message = f"engine {spec.engine.name} reads no weights of ours: no cache volume, no cache Job"
        return CacheState(NOT_NEEDED, message, ready=True)
    if spec.per_node_cache:
        return per_node_state(spec, observed)
    claim_name = volume.claim_name
    claim = observed.claim
    if claim is None and not volume.owned:
        msg = f"PersistentVolumeClaim {claim_name} does not exist"
        info = CacheStatus(claim_name=claim_name, path=volume.model_dir)
        return CacheState(PVC_NOT_FOUND, msg, failure=Failure(PVC_NOT_FOUND, msg), info=info)
    claim_pending = claim is None or get(claim, "status", "phase") != "Bound"
    if not spec.source.needs_fetch:
        if claim_pending:
            return CacheState(PVC_PENDING, f"PersistentVolumeClaim {claim_name} is not bound")
        info = CacheStatus(claim_name=claim_name, path=volume.model_dir)
        ready = CacheState(VOLUME_READY, f"serving from PersistentVolumeClaim {claim_name}", ready=True, info=info)
        return _not_shareable(spec, claim, ready)
    plan = plan or plan_cache(spec, previous, observed.deployment)
    state = _not_shareable(spec, claim, _shared_state(spec, plan, claim_name, claim_pending, observed, previous))
    return state


def _not_shareable(spec: ImageModelSpec, claim: Obj | None, state: CacheState) -> CacheState:
    """A ReadWriteOnce cache serving several replicas: said in CacheReady's reason (they share one node)."""
    replicas = spec.desired_replicas
    if not state.ready or state.failure is not None or replicas < 2:  # a swap in progress says so instead
        return state
    if not pinned_to_one_node(spec, get(claim, "spec", "accessModes")):
        return state
    message = (
        f"{state.message}; the claim is not ReadWriteMany or ReadOnlyMany, so all {replicas} pods are kept on"
        " the node it is attached to (use such an accessMode, or cache.mode perNode, to spread them)"
    )
    return replace(state, reason=CACHE_NOT_SHAREABLE, message=message)


def _shared_state(
    spec: ImageModelSpec,
    plan: CachePlan,
    claim_name: str,
    claim_pending: bool,
    observed: Observed,
    previous: CacheStatus | None,
) -> CacheState:
    state = _target_state(spec, plan.target, claim_name, claim_pending, observed, previous)
    if state.ready:
        retiring = plan.serving or plan.retiring
        return _with(state, retiring=retiring)
    if plan.serving is None or previous is None:
        return state
    old = previous
    serving_info = CacheStatus(
        claim_name=claim_name,
        path=old.path,
        key=old.key,
        revision=old.revision,
        bytes=old.bytes,
        completed_at=old.completed_at,
        extras=old.extras,
        pending=plan.target,
        retiring=plan.retiring,
    )
    shown = old.revision or old.key
    if state.failure is not None:
        failure = state.failure
        message = f"{failure.message} (revision {shown} keeps serving from {old.path})"
        return CacheState(failure.reason, message, failure=failure, info=serving_info, serving=plan.serving)
    message = f"revision {shown} serves from {old.path} while the new source downloads beside it: {state.message}"
    return CacheState(SWAPPING, message, info=serving_info, serving=plan.serving)


def _with(state: CacheState, *, retiring: CacheCopy | None) -> CacheState:
    if state.info is None or retiring is None:
        return state
    return replace(state, info=state.info.model_copy(update={"retiring": retiring}))


def extra_revisions(spec: ImageModelSpec, summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    """The revisions fetch-model reported for the extra weights, by their directory in the copy."""
    out = {}
    for extra in spec.extras:
        revision = summaries.get(extra.container, {}).get("revision") if extra.fetched else None
        if isinstance(revision, str) and revision:
            out[extra.subdir] = revision
    return out or None


def _target_state(
    spec: ImageModelSpec,
    target: CacheCopy,
    claim_name: str,
    claim_pending: bool,
    observed: Observed,
    previous: CacheStatus | None,
) -> CacheState:
    """The copy the spec asks for: complete (this Job or an earlier one said so), downloading, or why not."""
    info = CacheStatus(claim_name=claim_name, path=target.path, key=target.key)
    job = observed.job
    same = previous is not None and previous.key == target.key and previous.path == target.path
    prev = previous if same and previous is not None else CacheStatus(claim_name=claim_name)
    if prev.completed_at and not is_true(job, "Complete") and not is_true(job, "Failed"):
        # These weights were cached before and the finished Job has been deleted since (by hand, a cleanup
        # policy for finished Jobs, or to prune an old copy): its re-run finds the marker at once.
        info = info.model_copy(
            update={
                "revision": prev.revision,
                "bytes": prev.bytes,
                "completed_at": prev.completed_at,
                "extras": prev.extras,
            }
        )
        msg = f"weights cached in {claim_name} (a new cache Job checks them)"
        return CacheState(DOWNLOADED, msg, ready=True, info=info)
    if job is None:
        return CacheState(CACHE_PENDING, "creating the cache Job", info=info)
    if is_true(job, "Complete"):
        summaries = fetch_summaries(observed.job_pods)
        summary = fetch_summary(observed.job_pods)
        revision = _str(summary["revision"]) if "revision" in summary else prev.revision
        info = info.model_copy(
            update={
                "revision": revision,
                "extras": extra_revisions(spec, summaries) or prev.extras,
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


def per_node_state(spec: ImageModelSpec, observed: Observed) -> CacheState:
    """perNode: each pod's init container fills its own volume; the pods report how that went."""
    key = spec.weights_key()
    info = CacheStatus(path=names.cache_dir(key), key=key)
    summary = fetch_summary(observed.pods, init=True)
    if summary.get("revision"):
        extras = extra_revisions(spec, fetch_summaries(observed.pods, init=True))
        update = {"revision": _str(summary["revision"]), "bytes": _int(summary.get("bytes")), "extras": extras}
        info = info.model_copy(update=update)
    message = "each pod downloads its own copy into a generic ephemeral volume (cache.mode perNode)"
    return CacheState(PER_NODE_CACHE, message, ready=True, info=info)
