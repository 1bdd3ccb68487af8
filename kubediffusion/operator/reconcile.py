"""One level-triggered reconcile of one ImageModel: read → parse → observe → build → apply → status.

It makes the whole desired state true every time and is safe to run twice or concurrently with a
restart: children have fixed names, so a second run finds what the first made. Each child is read and
server-side applied unless it is already as desired (:mod:`~kubediffusion.operator.applied`: drift is
still applied back on every reconcile). Everything it learns
goes into one :class:`~kubediffusion.operator.status.Observation` (including a child the API server
refused), from which the status is derived once and server-side applied, unless it did not change.
Waiting is not done here: the returned :class:`Outcome` says whether the model is still converging,
and the handler turns that into ``kopf.TemporaryError``. A spec the operator refuses raises
:class:`Refused` after the status says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.resource import KIND
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError, resolve_resources
from kubediffusion.imagemodel.status import (
    APPLY_REJECTED,
    CACHE_TOO_SMALL_FOR_SWAP,
    DOWNLOAD_FAILED,
    INVALID_SPEC,
    SCALED_TO_ZERO,
    SWAPPING,
    UNKNOWN_PROFILE,
    CacheStatus,
    ImageModelStatus,
)
from kubediffusion.operator import status
from kubediffusion.operator.applied import stamped, up_to_date
from kubediffusion.operator.cache import plan_cache
from kubediffusion.operator.kube import Kube, KubeError
from kubediffusion.operator.parts import pinned_to_one_node
from kubediffusion.operator.policy import images_refusal, server_image
from kubediffusion.operator.problems import Failure, is_true
from kubediffusion.operator.problems import field as get
from kubediffusion.operator.resources import (
    CacheVolume,
    Context,
    build_cache_job,
    build_cache_pvc,
    build_deployment,
    build_service,
    cache_volume,
)
from kubediffusion.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

_UNREAD: Any = object()  # apply(): the live child is not known yet
CONVERGING_PHASES = frozenset({"Pending", "Caching", "Loading", "Degraded"})
# Degraded for these, nothing changes until someone edits the spec (a failed download of new weights while
# the old ones serve: the Job failed for good, or there is no room for a second copy).
SETTLED_REASONS = frozenset({SCALED_TO_ZERO, APPLY_REJECTED, DOWNLOAD_FAILED, CACHE_TOO_SMALL_FOR_SWAP})


class Refused(Exception):
    """The spec cannot be acted on until someone changes it (or creates what it refers to)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.reason}: {failure.message}")
        self.failure = failure


@dataclass(frozen=True)
class Outcome:
    phase: str
    message: str
    reason: str = ""  # why the phase: the Degraded condition's reason when Degraded, else the Ready one's
    swapping: bool = False  # new weights download beside the serving ones (any phase)

    @classmethod
    def of(cls, new: ImageModelStatus) -> Outcome:
        ready = new.condition("Ready")
        why = new.condition("Degraded") if new.phase == "Degraded" else ready
        cache = new.condition("CacheReady")
        swapping = cache is not None and cache.reason == SWAPPING
        return cls(new.phase or "", ready.message if ready else "", why.reason if why else "", swapping)

    @property
    def converging(self) -> bool:
        # Pending with spec.replicas 0, or Degraded because the API server refuses what the spec asks for,
        # is settled: nothing changes until someone edits the spec (pod events and the resync still look).
        # A Ready model whose new weights are downloading is not: its pods roll once they are complete.
        return self.swapping or (self.phase in CONVERGING_PHASES and self.reason not in SETTLED_REASONS)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


EventSink = Callable[[Mapping[str, Any], status.Event], None]


def reconcile(
    kube: Kube,
    settings: OperatorSettings,
    *,
    namespace: str,
    name: str,
    post_event: EventSink,
    now: Callable[[], str] = utc_now,
) -> Outcome | None:
    """Converge one ImageModel; None when it is gone or being deleted (garbage collection takes over)."""
    body = kube.get(KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    previous = ImageModelStatus.parse(body.get("status"))
    seen = _observe(kube, settings, body, previous.cache)
    new = status.derive_status(seen, previous=previous, now=now())
    if new != previous.model_copy(update={"autoscaling": None}):  # status.autoscaling is the autoscaler's
        kube.apply_status(namespace, name, new.wire())
    for event in status.transitions(previous, new):
        post_event(body, event)
    if seen.refused is not None:
        raise Refused(seen.refused)
    return Outcome.of(new)


def _observe(
    kube: Kube, settings: OperatorSettings, body: Mapping[str, Any], previous_cache: CacheStatus | None
) -> status.Observation:
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 0)
    spec: ImageModelSpec | None = None
    try:
        spec = ImageModelSpec.from_body(body)
        hardware = resolve_resources(spec.resources, settings.profiles)
        refused = _refusal(spec, settings)
    except InvalidSpecError as exc:
        refused = Failure(UNKNOWN_PROFILE if exc.field == "resources.profile" else INVALID_SPEC, str(exc))
    if refused is not None or spec is None:
        # Nothing is applied, but pods of an earlier spec may still serve: readyReplicas says so.
        deployment = kube.get("Deployment", namespace, names.deployment_name(name))
        return status.Observation(
            name=name,
            namespace=namespace,
            generation=generation,
            spec=spec,
            children=status.Observed(deployment=deployment),
            refused=refused or Failure(INVALID_SPEC, "spec could not be parsed"),
        )
    owner = names.Owner(name=name, namespace=namespace, uid=meta["uid"])
    image = server_image(spec, inference_image=settings.inference_image, adapter_image=settings.adapter_image)
    ctx = Context(
        owner=owner, image=image, hardware=hardware, download=settings.download, otlp_endpoint=settings.otlp_endpoint
    )
    return _apply_children(kube, spec, ctx, generation, cache_volume(spec, name), previous_cache)


def _refusal(spec: ImageModelSpec, settings: OperatorSettings) -> Failure | None:
    """What the operator will not run for this spec (docs/security.md); nothing is applied then.

    A token Secret is not looked up here: the operator has no access to Secrets. The kubelet resolves
    it for the cache Job's pod, and a missing one shows there as ``SecretNotFound``.
    """
    refused = images_refusal(spec, settings.allowed_images, (settings.inference_image, settings.adapter_image))
    return refused or settings.download.refusal(spec.source)


def _observe_job(
    kube: Kube, desired: Mapping[str, Any] | None, known: CacheStatus | None = None
) -> tuple[Any, list[Any], bool]:
    """The cache Job and its pods, if it matches the desired one; ``replaced`` when a stale one was deleted.

    The pods of a complete Job are not listed again once the status has what they told (``known``:
    the revision and size of this very copy, from a reconcile that read them): they change no more.

    A stale Job is deleted and re-created on the next pass, once it is gone: a new source, a new
    directory or keep-list (even when finished: its re-run prunes the copies no pod reads any more,
    :mod:`kubediffusion.operator.cache`), or a changed template while unfinished. A finished Job whose
    template merely changed (e.g. a new operator image) is kept: its weights are still right. A failed
    Job with an unchanged template stays failed (no retry storm): delete it to retry the download.
    """
    if desired is None:
        return None, [], False
    meta = desired["metadata"]
    job = kube.get("Job", meta["namespace"], meta["name"])
    if job is None:
        return None, [], False
    if job["metadata"].get("deletionTimestamp"):
        return None, [], True
    annotations = job["metadata"].get("annotations") or {}
    wanted = meta["annotations"]
    complete = is_true(job, "Complete")

    def differs(name: str, missing: str | None = None) -> bool:
        have = annotations.get(name, missing)
        return have is not None and have != wanted[name]

    stale_key = annotations.get(names.CACHE_KEY_ANNOTATION) != wanted[names.CACHE_KEY_ANNOTATION]
    # A Job of an operator before side-by-side swaps has neither annotation: /models/model, nothing kept.
    moved = differs(names.CACHE_PATH_ANNOTATION) or differs(names.CACHE_KEEP_ANNOTATION, missing="")
    stale_template = annotations.get(names.TEMPLATE_HASH_ANNOTATION) != wanted[names.TEMPLATE_HASH_ANNOTATION]
    if stale_key or moved or (stale_template and not complete):
        log.info("replacing cache Job %s/%s (source, copies or template changed)", meta["namespace"], meta["name"])
        # Foreground: the Job (and so its replacement) waits until its pods are gone, so two fetch-model
        # pods never write the same volume at once.
        kube.delete("Job", meta["namespace"], meta["name"], propagation="Foreground")
        return None, [], True
    recorded = (
        known is not None
        and known.completed_at is not None
        and (known.key, known.path) == (wanted[names.CACHE_KEY_ANNOTATION], wanted.get(names.CACHE_PATH_ANNOTATION))
    )
    if complete and recorded:
        return job, [], False
    uid = job["metadata"]["uid"]
    pods = kube.list("Pod", meta["namespace"], {"batch.kubernetes.io/controller-uid": uid})
    return job, pods, False


def _apply_children(
    kube: Kube,
    spec: ImageModelSpec,
    ctx: Context,
    generation: int,
    volume: CacheVolume,
    previous_cache: CacheStatus | None,
) -> status.Observation:
    ns, name = ctx.owner.namespace, ctx.owner.name
    rejected: list[Failure] = []

    def apply(obj: Mapping[str, Any] | None, live: Any = _UNREAD) -> dict[str, Any] | None:
        """Server-side apply ``obj`` unless ``live`` (read now, unless given) is already as desired."""
        if obj is None:
            return None
        kind, obj_name = obj["kind"], obj["metadata"]["name"]
        if live is _UNREAD:
            live = kube.get(kind, ns, obj_name)
        if up_to_date(obj, live):
            return dict(live)
        try:
            return kube.apply(stamped(obj))
        except KubeError as exc:
            if exc.status >= 500:
                raise  # transient: kopf retries the handler with backoff
            rejected.append(Failure(APPLY_REJECTED, f"{kind} {obj_name}: {exc.message}"))
            return kube.get(kind, ns, obj_name)

    before = kube.get("Deployment", ns, names.deployment_name(name))
    # No Deployment: a new model (or one whose children were deleted): apply, do not read first what is
    # most likely not there. The Job is read anyway (a stale one is replaced).
    unread = None if before is None else _UNREAD
    claim = None
    if not spec.per_node_cache:
        pvc = build_cache_pvc(spec, ctx.owner)
        claim = apply(pvc, live=unread) or kube.get("PersistentVolumeClaim", ns, volume.claim_name)
    pin = pinned_to_one_node(spec, get(claim, "spec", "accessModes"))
    plan = plan_cache(spec, previous_cache, before) if spec.source.needs_fetch else None
    desired_job = None
    if plan is not None:
        desired_job = build_cache_job(spec, ctx, dest=plan.target.path, keep=plan.keep, pin=pin)
    job, job_pods, replaced = _observe_job(kube, desired_job, previous_cache)
    if desired_job is not None and not replaced and (job is None or not is_true(job, "Complete")):
        job = apply(desired_job, live=job)
    seen = status.Observed(claim=claim, job=job, job_pods=job_pods, deployment=before)
    cache = status.cache_state(spec, volume, seen, previous_cache, plan)
    apply(build_service(spec, ctx.owner), live=unread)
    target = plan.target if plan is not None else None
    weights = target if cache.ready else (cache.serving or target)
    replicas = spec.desired_replicas if cache.serves else 0
    # ``before`` was read in this reconcile: a change since is an event of the Deployment, which reconciles again.
    deployment = apply(build_deployment(spec, ctx, replicas=replicas, weights=weights, pin=pin), live=before)
    pods = kube.list("Pod", ns, names.selector(name)) if deployment is not None else []
    children = status.Observed(claim=claim, job=job, job_pods=job_pods, deployment=deployment, pods=pods)
    if spec.per_node_cache:
        cache = status.cache_state(spec, volume, children)  # its revision is what the pods fetched
    return status.Observation(
        name=name,
        namespace=ns,
        generation=generation,
        spec=spec,
        children=children,
        cache=cache,
        rejected=rejected[0] if rejected else None,
    )
