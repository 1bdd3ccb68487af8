"""One level-triggered reconcile of one ImageModel: read → parse → observe → build → apply → status.

It applies the whole desired state every time and is safe to run twice or concurrently with a
restart: children have fixed names, so a second run finds what the first made. Everything it learns
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
    INVALID_SPEC,
    SCALED_TO_ZERO,
    UNKNOWN_PROFILE,
    CacheStatus,
    ImageModelStatus,
)
from kubediffusion.operator import status
from kubediffusion.operator.kube import Kube, KubeError
from kubediffusion.operator.policy import image_refusal
from kubediffusion.operator.problems import Failure, is_true
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

CONVERGING_PHASES = frozenset({"Pending", "Caching", "Loading", "Degraded"})
SETTLED_REASONS = frozenset({SCALED_TO_ZERO, APPLY_REJECTED})


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

    @classmethod
    def of(cls, new: ImageModelStatus) -> Outcome:
        ready = new.condition("Ready")
        why = new.condition("Degraded") if new.phase == "Degraded" else ready
        return cls(new.phase or "", ready.message if ready else "", why.reason if why else "")

    @property
    def converging(self) -> bool:
        # Pending with spec.replicas 0, or Degraded because the API server refuses what the spec asks for,
        # is settled: nothing changes until someone edits the spec (pod events and the resync still look).
        return self.phase in CONVERGING_PHASES and self.reason not in SETTLED_REASONS


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
    if new != previous:
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
    image = spec.image or settings.inference_image
    ctx = Context(owner=owner, image=image, hardware=hardware, download=settings.download)
    return _apply_children(kube, spec, ctx, generation, cache_volume(spec, name), previous_cache)


def _refusal(spec: ImageModelSpec, settings: OperatorSettings) -> Failure | None:
    """What the operator will not run for this spec (docs/security.md); nothing is applied then.

    A token Secret is not looked up here: the operator has no access to Secrets. The kubelet resolves
    it for the cache Job's pod, and a missing one shows there as ``SecretNotFound``.
    """
    refused = image_refusal(spec.image, settings.allowed_images, settings.inference_image)
    return refused or settings.download.refusal(spec.source)


def _observe_job(kube: Kube, desired: Mapping[str, Any] | None) -> tuple[Any, list[Any], bool]:
    """The cache Job and its pods, if it matches the desired one; ``replaced`` when a stale one was deleted.

    A stale Job (new source, or a changed template while unfinished) is deleted and re-created on the
    next pass, once it is gone. A finished Job whose template merely changed (e.g. a new operator image)
    is kept: its weights are still right. A failed Job with an unchanged template stays failed (no retry
    storm): delete it to retry the download.
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
    stale_key = annotations.get(names.CACHE_KEY_ANNOTATION) != wanted[names.CACHE_KEY_ANNOTATION]
    stale_template = annotations.get(names.TEMPLATE_HASH_ANNOTATION) != wanted[names.TEMPLATE_HASH_ANNOTATION]
    if stale_key or (stale_template and not complete):
        log.info("replacing cache Job %s/%s (source or template changed)", meta["namespace"], meta["name"])
        # Foreground: the Job (and so its replacement) waits until its pods are gone, so two fetch-model
        # pods never write the same volume at once.
        kube.delete("Job", meta["namespace"], meta["name"], propagation="Foreground")
        return None, [], True
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

    def apply(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if obj is None:
            return None
        try:
            return kube.apply(obj)
        except KubeError as exc:
            if exc.status >= 500:
                raise  # transient: kopf retries the handler with backoff
            kind, obj_name = obj["kind"], obj["metadata"]["name"]
            rejected.append(Failure(APPLY_REJECTED, f"{kind} {obj_name}: {exc.message}"))
            return kube.get(kind, ns, obj_name)

    claim = apply(build_cache_pvc(spec, ctx.owner)) or kube.get("PersistentVolumeClaim", ns, volume.claim_name)
    desired_job = build_cache_job(spec, ctx)
    job, job_pods, replaced = _observe_job(kube, desired_job)
    if desired_job is not None and not replaced and (job is None or not is_true(job, "Complete")):
        job = apply(desired_job)  # an unchanged Job re-applies as a no-op
    cache = status.cache_state(spec, volume, status.Observed(claim=claim, job=job, job_pods=job_pods), previous_cache)
    apply(build_service(spec, ctx.owner))
    deployment = apply(build_deployment(spec, ctx, replicas=spec.replicas if cache.ready else 0))
    pods = kube.list("Pod", ns, names.selector(name)) if deployment is not None else []
    return status.Observation(
        name=name,
        namespace=ns,
        generation=generation,
        spec=spec,
        children=status.Observed(claim=claim, job=job, job_pods=job_pods, deployment=deployment, pods=pods),
        cache=cache,
        rejected=rejected[0] if rejected else None,
    )
