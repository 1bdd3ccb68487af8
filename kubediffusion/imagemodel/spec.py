"""The typed ImageModel spec: parsed once per reconcile, read by builders, status and the router.

This module imports neither kopf nor kubernetes, so any component can read an ImageModel with it:
``ImageModelSpec.from_body(body)``. Field names are snake_case in Python and camelCase on the wire.

The CRD's OpenAPI schema + CEL rules (crds/imagemodel.yaml) reject most bad manifests at the API
server; what they cannot see (cross-field checks that need parsing, e.g. a default size outside the
limits) raises :class:`InvalidSpecError` here, which the operator reports as ``Failed/InvalidSpec``.
Defaults live here, not in the CRD schema, because some depend on other fields (the tiny model).

``engine`` (:mod:`.engine`) says what makes the images: the diffusers engine (the default) serves the
weights of ``source``; every other engine holds its own weights, so ``source``, ``pipeline``, ``dtype``,
``cache`` and the pipeline's ``adapters``, ``scheduler`` and ``components`` are refused with it
(:data:`DIFFUSERS_ONLY`; of ``safety`` it takes the blocked terms). Sources are :mod:`.sources`, the
pipeline's fields :mod:`.pipelines`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset, parse_size
from kubediffusion.imagemodel.engine import Engine
from kubediffusion.imagemodel.pipelines import (
    Adapter,
    Components,
    Extra,
    Safety,
    SchedulerConfig,
    check_adapters,
    extras,
)
from kubediffusion.imagemodel.sources import HuggingFaceSource, PvcSource, Source, TinySource
from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS
from kubediffusion.imagemodel.wire import InvalidSpecError, SecretKeyRef, display_url
from kubediffusion.imagemodel.wire import SpecPart as _Spec

# Defined in .wire, .sources (shared with .engine, .pipelines); imported from here by the rest of the package.
__all__ = [
    "HuggingFaceSource",
    "InvalidSpecError",
    "PvcSource",
    "SecretKeyRef",
    "Source",
    "TinySource",
    "display_url",
]

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"

_M = TypeVar("_M", bound=BaseModel)
Dtype = Literal["float16", "bfloat16", "float32"]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]
CacheMode = Literal["shared", "perNode"]
SwapMode = Literal["sideBySide", "scaleToZero"]
# Access modes that let pods on more than one node mount a claim at once.
SHAREABLE_ACCESS_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})
# Fields only the diffusers engine reads (wire names): another engine holds its own weights and pipeline.
DIFFUSERS_ONLY = ("source", "pipeline", "dtype", "cache", "adapters", "scheduler", "components")


class Resources(_Spec):
    gpus: int | None = Field(default=None, ge=0, le=64)
    gpu_resource_name: str | None = None
    profile: str = ""
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None


class HardwareProfile(_Spec):
    """A named set of resources from the operator's settings (``KD_OPERATOR_PROFILES``)."""

    gpus: int = Field(default=1, ge=0, le=64)
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None


# What a model runs with when it names no profile: one GPU of the default resource name.
DEFAULT_PROFILE = HardwareProfile()


def resolve_resources(resources: Resources, profiles: Mapping[str, HardwareProfile]) -> HardwareProfile:
    """Profile (or the default) overlaid with the fields the spec sets explicitly."""
    if resources.profile:
        if resources.profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none configured"
            raise InvalidSpecError(
                "resources.profile", f"unknown hardware profile {resources.profile!r} (known: {known})"
            )
        base = profiles[resources.profile]
    else:
        base = DEFAULT_PROFILE
    overrides = {
        name: getattr(resources, name)
        for name in resources.model_fields_set
        if name != "profile" and getattr(resources, name) is not None
    }
    return base.model_copy(update=overrides)


class Cache(_Spec):
    size: str = "20Gi"
    storage_class_name: str | None = None
    access_mode: AccessMode = "ReadWriteOnce"
    existing_claim: str | None = None
    retain_on_delete: bool = True
    # shared: one claim for every pod, filled by the cache Job; perNode: each pod fills its own
    # generic ephemeral volume in an init container (no claim to share, no cache Job).
    mode: CacheMode = "shared"
    # sideBySide: new weights are downloaded beside the serving copy, pods roll once they are complete;
    # scaleToZero: the old copy is removed and the model scaled to 0 while the new one downloads.
    swap: SwapMode = "sideBySide"


class Autoscaling(_Spec):
    """The built-in autoscaler's bounds and targets (kubediffusion/operator/autoscaler)."""

    min_replicas: int = Field(default=1, ge=0, le=100)
    max_replicas: int = Field(ge=1, le=100)
    # Queued + running images per pod the autoscaler aims for; None: spec.serving.maxBatchSize.
    target_images_per_replica: int | None = Field(default=None, ge=1, le=10000)
    scale_down_delay_seconds: int = Field(default=300, ge=0, le=86400)
    idle_seconds_before_zero: int = Field(default=600, ge=0, le=604800)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas {self.min_replicas} exceeds maxReplicas {self.max_replicas}")
        return self


class Serving(_Spec):
    max_batch_size: int = Field(default=4, ge=1, le=64)
    batch_window_ms: int = Field(default=20, ge=0, le=10000)
    max_queue: int = Field(default=16, ge=1, le=10000)
    compile: bool = False
    warmup: bool = True


def _overlay(base: _M, explicit: _M | None) -> _M:
    """``base`` with the fields ``explicit`` sets; re-validated, so min/max checks see the result."""
    if explicit is None:
        return base
    merged = {**base.model_dump(), **{k: getattr(explicit, k) for k in explicit.model_fields_set}}
    return type(base).model_validate(merged)


class ImageModelSpec(_Spec):
    source: Source = Field(default_factory=Source)  # required by the diffusers engine, refused by the others
    engine: Engine = Field(default_factory=Engine)
    pipeline: str = "auto"
    dtype: Dtype | None = None
    aliases: list[str] = Field(default_factory=list)
    default: bool = False
    defaults: GenerationDefaults | None = None
    limits: GenerationLimits | None = None
    presets: dict[str, StylePreset] = Field(default_factory=dict)
    replicas: int | None = Field(default=None, ge=0, le=100)  # None: see desired_replicas
    autoscaling: Autoscaling | None = None
    resources: Resources = Field(default_factory=Resources)
    cache: Cache = Field(default_factory=Cache)
    serving: Serving = Field(default_factory=Serving)
    image: str = ""
    adapters: list[Adapter] = Field(default_factory=list)  # the pipeline's extras: docs/pipelines.md
    scheduler: SchedulerConfig | None = None
    components: Components | None = None
    safety: Safety | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ImageModelSpec:
        """Parse ``body['spec']``; InvalidSpecError (with the field path) on anything unservable."""
        raw = body.get("spec")
        if not isinstance(raw, Mapping):
            raise InvalidSpecError("", "spec is missing")
        try:
            spec = cls.model_validate(dict(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise InvalidSpecError(field, err["msg"]) from None
        spec._check_engine()
        spec._check_pipeline()
        try:
            spec._check_defaults_within_limits()
        except ValidationError as exc:  # an overlay of partial limits that contradicts itself
            raise InvalidSpecError("limits", exc.errors()[0]["msg"]) from None
        if spec.cache.mode == "perNode" and (spec.source.pvc is not None or spec.cache.existing_claim):
            why = "perNode downloads into each pod: not with source.pvc or existingClaim"
            raise InvalidSpecError("cache.mode", why)
        return spec

    def _check_engine(self) -> None:
        """``source`` with diffusers and only there, the engine's own rules, an openai upstream's sizes."""
        engine = self.engine
        problem = engine.problem()
        if problem is not None:
            raise InvalidSpecError(*problem)
        if engine.name == "diffusers":
            if self.source.kind == "none":
                raise InvalidSpecError("source", "exactly one of huggingface, url, pvc, tiny must be set (got none)")
        else:
            given = {type(self).model_fields[n].alias or n for n in self.model_fields_set}
            other = next((name for name in DIFFUSERS_ONLY if name in given), None)
            if other is not None:
                why = f"a setting of the diffusers engine; engine {engine.name} reads no weights of ours"
                raise InvalidSpecError(other, why)
        if engine.sizes and self.effective_defaults.size not in engine.sizes:
            size = self.effective_defaults.size
            raise InvalidSpecError("engine.sizes", f"the default size {size} is not one of {engine.sizes}")

    def _check_pipeline(self) -> None:
        """What the server refuses of the adapters as a list, a non-diffusers checker, and extra weights
        to download where nothing downloads (a pvc source is the cache)."""
        problem = check_adapters(self.adapters)
        if problem is not None:
            raise InvalidSpecError(*problem)
        safety = self.safety
        if self.engine.name != "diffusers" and safety is not None and safety.checker not in ("none", "auto"):
            why = f"an image checker runs in the diffusers engine; engine {self.engine.name} takes only blockedTerms"
            raise InvalidSpecError("safety.checker", why)
        fetched = next((extra for extra in self.extras if extra.fetched), None)
        if fetched is not None and self.source.pvc is not None:
            why = "is downloaded into the cache, and a pvc source is the cache (put it in a pvc too)"
            raise InvalidSpecError(fetched.field, f"{fetched.source.describe()} {why}")

    def _check_defaults_within_limits(self) -> None:
        width, height = parse_size(self.effective_defaults.size)
        limits = self.effective_limits
        for side in (width, height):
            if not limits.min_size <= side <= limits.max_size:
                raise InvalidSpecError(
                    "defaults.size",
                    f"{self.effective_defaults.size} is outside limits "
                    f"minSize={limits.min_size}..maxSize={limits.max_size}",
                )
        if self.effective_defaults.steps > limits.max_steps:
            raise InvalidSpecError(
                "defaults.steps", f"{self.effective_defaults.steps} exceeds limits.maxSteps={limits.max_steps}"
            )

    @property
    def extras(self) -> list[Extra]:
        """The pipeline's extra weights (adapters, components, a checker repo), fetched or mounted."""
        return extras(self.adapters, self.components, self.safety) if self.needs_weights else []

    def weights_key(self) -> str:
        """The cache key of the model's copy: the source's, and with extra weights fetched into the copy
        also theirs, so a change of adapters or components is a new copy beside the serving one."""
        key = self.source.cache_key()
        fetched = sorted(  # by directory: the order of the adapters in the list is not their bytes
            (extra.subdir, extra.source.model_dump(mode="json", exclude_none=True), extra.file)
            for extra in self.extras
            if extra.fetched
        )
        if not fetched:
            return key  # as before extra weights existed: an upgrade downloads nothing again
        canonical = json.dumps({"source": key, "extras": fetched}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def desired_replicas(self) -> int:
        """spec.replicas (what ``/scale`` and the autoscaler write), else minReplicas, else 1."""
        if self.replicas is not None:
            return self.replicas
        return self.autoscaling.min_replicas if self.autoscaling is not None else 1

    @property
    def target_images_per_replica(self) -> int:
        explicit = self.autoscaling.target_images_per_replica if self.autoscaling is not None else None
        return explicit or self.serving.max_batch_size

    @property
    def needs_weights(self) -> bool:
        """Whether the pods read weights from a volume (the diffusers engine); other engines hold their own."""
        return self.engine.name == "diffusers"

    @property
    def per_node_cache(self) -> bool:
        return self.needs_weights and self.cache.mode == "perNode" and self.source.needs_fetch

    @property
    def is_smoke_test(self) -> bool:
        """The tiny model or the stub engine: labelled as such everywhere (status, pods, /v1/models)."""
        return self.source.tiny is not None or self.engine.name == "stub"

    def describe(self) -> str:
        """What serves the model, shortly: the ``Source`` printer column."""
        return self.source.describe() if self.needs_weights else self.engine.describe()

    @property
    def effective_defaults(self) -> GenerationDefaults:
        """The spec's ``defaults`` over the source's base (tiny or real-model defaults)."""
        base = TINY_DEFAULTS if self.source.tiny is not None else GenerationDefaults()
        return _overlay(base, self.defaults)

    @property
    def effective_limits(self) -> GenerationLimits:
        base = TINY_LIMITS if self.source.tiny is not None else GenerationLimits()
        return _overlay(base, self.limits)

    def effective_dtype(self, gpus: int) -> Dtype | Literal["auto"]:
        """The model server's dtype: ``auto`` on GPUs (bfloat16 where the GPU has it, else float16: the
        server asks the device); float32 on CPU and for the tiny model unless the spec says otherwise."""
        if self.dtype is not None:
            return self.dtype
        return "float32" if gpus == 0 or self.source.tiny is not None else "auto"
