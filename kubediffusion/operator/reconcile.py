"""One level-triggered reconcile of one ImageModel: read → parse → observe → build → apply → status.

It applies the whole desired state every time and is safe to run twice or concurrently with a
restart: children have fixed names, so a second run finds what the first made. Waiting is not done
here: the returned :class:`Outcome` says whether the model is still converging, and the handler turns
that into ``kopf.TemporaryError``. A spec the operator refuses raises :class:`Refused` after the status
says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError, resolve_resources
from kubediffusion.operator import status
from kubediffusion.operator.kube import Kube, KubeError
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

APPLY_REJECTED = "ApplyRejected"
CONVERGING_PHASES = frozenset({"Pending", "Caching", "Loading", "Degraded"})
SETTLED_REASONS = frozenset({status.SCALED_TO_ZERO, APPLY_REJECTED})


class Refused(Exception):
    """The spec cannot be acted on until someone changes it (or creates what it refers to)."""

    def __init__(self, failure: status.Failure) -> None:
        super().__init__(f"{failure.reason}: {failure.message}")
        self.failure = failure


@dataclass(frozen=True)
class Outcome:
    phase: str
    message: str
    reason: str = ""  # why the phase: the Degraded condition's reason when Degraded, else the Ready one's

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
    body = kube.get("ImageModel", namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    generation = int(meta.get("generation") or 0)
    previous: Mapping[str, Any] = body.get("status") or {}
    owner = names.Owner(name=name, namespace=namespace, uid=meta["uid"])

    spec: ImageModelSpec | None = None
    refused: status.Failure | None = None
    try:
        spec = ImageModelSpec.from_body(body)
        hardware = resolve_resources(spec.resources, settings.profiles)
        refused = _check_secret(kube, spec, namespace)
    except InvalidSpecError as exc:
        reason = status.UNKNOWN_PROFILE if exc.field == "resources.profile" else status.INVALID_SPEC
        refused = status.Failure(reason, str(exc))

    if refused is not None or spec is None:
        failure = refused or status.Failure(status.INVALID_SPEC, "spec could not be parsed")
        # Nothing is applied, but pods of an earlier spec may still serve: readyReplicas says so.
        deployment = kube.get("Deployment", namespace, names.deployment_name(name))
        new = status.derive_status(
            spec,
            name=name,
            namespace=namespace,
            generation=generation,
            volume=None,
            observed=status.Observed(deployment=deployment),
            refused=failure,
            previous=previous,
            now=now(),
        )
        _write_status(kube, body, previous, new, post_event)
        raise Refused(failure)

    ctx = Context(owner=owner, image=spec.image or settings.inference_image, hardware=hardware)
    volume = cache_volume(spec, name)
    observed, rejected = _apply_children(kube, spec, ctx, volume, previous.get("cache"))
    new = status.derive_status(
        spec,
        name=name,
        namespace=namespace,
        generation=generation,
        volume=volume,
        observed=observed,
        refused=None,
        previous=previous,
        now=now(),
    )
    if rejected is not None and new["phase"] != "Failed":
        new = _degrade(new, rejected, generation, now())
    _write_status(kube, body, previous, new, post_event)
    conditions = {c["type"]: c for c in new["conditions"]}
    ready: dict[str, Any] = conditions.get("Ready", {})
    why = conditions.get("Degraded", {}) if new["phase"] == "Degraded" else ready
    return Outcome(new["phase"], str(ready.get("message", "")), str(why.get("reason", "")))


def _check_secret(kube: Kube, spec: ImageModelSpec, namespace: str) -> status.Failure | None:
    hf = spec.source.huggingface
    if hf is None or hf.token_secret_ref is None:
        return None
    ref = hf.token_secret_ref
    found = kube.secret_key_exists(namespace, ref.name, ref.key)
    if found is None:
        return status.Failure(
            status.SECRET_NOT_FOUND, f"Secret {ref.name} (spec.source.huggingface.tokenSecretRef) not found"
        )
    if not found:
        return status.Failure(status.SECRET_NOT_FOUND, f"Secret {ref.name} has no key {ref.key!r}")
    return None


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
    complete = status.is_true(job, "Complete")
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
    kube: Kube, spec: ImageModelSpec, ctx: Context, volume: CacheVolume, previous_cache: Mapping[str, Any] | None
) -> tuple[status.Observed, status.Failure | None]:
    ns, name = ctx.owner.namespace, ctx.owner.name
    rejected: list[status.Failure] = []

    def apply(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if obj is None:
            return None
        try:
            return kube.apply(obj)
        except KubeError as exc:
            if exc.status >= 500:
                raise  # transient: kopf retries the handler with backoff
            kind, obj_name = obj["kind"], obj["metadata"]["name"]
            rejected.append(status.Failure(APPLY_REJECTED, f"{kind} {obj_name}: {exc.message}"))
            return kube.get(kind, ns, obj_name)

    claim = apply(build_cache_pvc(spec, ctx.owner)) or kube.get("PersistentVolumeClaim", ns, volume.claim_name)
    desired_job = build_cache_job(spec, ctx)
    job, job_pods, replaced = _observe_job(kube, desired_job)
    if desired_job is not None and not replaced and (job is None or not status.is_true(job, "Complete")):
        job = apply(desired_job)  # an unchanged Job re-applies as a no-op
    observed = status.Observed(claim=claim, job=job, job_pods=job_pods)
    cache = status.cache_state(spec, volume, observed, previous_cache)
    apply(build_service(spec, ctx.owner))
    deployment = apply(build_deployment(spec, ctx, replicas=spec.replicas if cache.ready else 0))
    pods = kube.list("Pod", ns, names.selector(name)) if deployment is not None else []
    observed = status.Observed(claim=claim, job=job, job_pods=job_pods, deployment=deployment, pods=pods)
    return observed, (rejected[0] if rejected else None)


def _degrade(new: dict[str, Any], failure: status.Failure, generation: int, now: str) -> dict[str, Any]:
    conditions = [c for c in new["conditions"] if c["type"] != "Degraded"]
    conditions.append(
        status.condition(
            "Degraded",
            True,
            failure.reason,
            failure.message,
            generation=generation,
            previous=new["conditions"],
            now=now,
        )
    )
    last = status.last_failure(failure, new.get("lastFailure"), now)
    return {**new, "phase": "Degraded", "conditions": conditions, "lastFailure": last}


def _write_status(
    kube: Kube,
    body: Mapping[str, Any],
    previous: Mapping[str, Any],
    new: dict[str, Any],
    post_event: EventSink,
) -> None:
    if _strip(new) != _strip(previous):
        kube.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], status_patch(previous, new))
    for event in status.transitions(previous, new):
        post_event(body, event)


def status_patch(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch that turns ``previous`` into ``new``: None for every key ``new`` no longer has.

    Merge patches merge nested objects, so a key missing from ``new`` (e.g. ``cache.revision`` after a
    change of source) would otherwise survive from ``previous``. Lists are replaced whole.
    """
    out: dict[str, Any] = {key: None for key in previous if key not in new}
    for key, value in new.items():
        old = previous.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = status_patch(old, value)
        else:
            out[key] = value
    return out


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
