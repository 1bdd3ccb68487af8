"""The typed ImageModel status: what the operator writes and the router and people read.

Field names are snake_case in Python and camelCase on the wire, as in crds/imagemodel.yaml.
``wire()`` is what goes to the API server: fields that are None are left out, so a field the operator
stops setting is one it stops applying, and server-side apply removes it. ``parse`` reads whatever a
stored status holds (an older operator's, a hand edit) without failing: what cannot be read counts as
absent, so the next write replaces it.

Condition reasons are a contract (alerts and tests match on them): the constants below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Caching", "Loading", "Ready", "Degraded", "Failed"]
ConditionType = Literal["CacheReady", "Available", "Ready", "Degraded"]
CONDITION_TYPES: tuple[ConditionType, ...] = ("CacheReady", "Available", "Ready", "Degraded")

# Stable condition reasons.
INVALID_SPEC = "InvalidSpec"
UNKNOWN_PROFILE = "UnknownProfile"
SECRET_NOT_FOUND = "SecretNotFound"  # the kubelet cannot find the token Secret (or its key) a model names
DOWNLOAD_REFUSED = "DownloadRefused"  # the operator's download policy refuses spec.source.url (no Job is made)
IMAGE_NOT_ALLOWED = "ImageNotAllowed"  # spec.image or spec.engine.image is outside the operator's allowed images
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
APPLY_REJECTED = "ApplyRejected"  # the API server refused a child the spec asks for (e.g. a shrunk claim)
SWAPPING = "Swapping"  # new weights download beside the copy that serves; the pods roll once they are complete
CACHE_TOO_SMALL_FOR_SWAP = "CacheTooSmallForSwap"  # no room for a second copy (see spec.cache.swap)
CACHE_NOT_SHAREABLE = "CacheNotShareable"  # a ReadWriteOnce cache and several replicas: all on one node
PER_NODE_CACHE = "PerNodeCache"  # each pod fills its own ephemeral copy (spec.cache.mode perNode)
NOT_NEEDED = "NotNeeded"  # CacheReady of an engine other than diffusers: it reads no weights of ours


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class Condition(_Wire):
    """kubebuilder-style; ``last_transition_time`` moves only when ``status`` changes."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "True"


class CacheCopy(_Wire):
    """One copy of the weights in the cache volume: the source's cache key and its directory."""

    key: str
    path: str


class CacheStatus(_Wire):
    """The weights volume: which claim, where the serving copy is, and what the cache Job wrote there.

    ``pending``: a new source downloading beside the serving copy; ``retiring``: the copy the pods are
    rolling away from, removed once the rollout is complete (the operator's memory between reconciles).
    ``key`` covers the extra weights fetched into the copy too (``ImageModelSpec.weights_key``).
    """

    claim_name: str | None = None  # None for a perNode cache (each pod has its own volume)
    path: str | None = None
    key: str | None = None  # the source's cache key: changes exactly when a new download is needed
    revision: str | None = None
    bytes: int | None = None
    completed_at: str | None = None
    pending: CacheCopy | None = None
    retiring: CacheCopy | None = None
    # The resolved revisions of the extra weights fetched into the copy, by their directory in it
    # (adapters/<name>, components/<kind>, safety-checker); None without any.
    extras: dict[str, str] | None = None


class AutoscalingStatus(_Wire):
    """The built-in autoscaler's last decision (written by it alone, with its own field manager)."""

    desired_replicas: int
    load: float  # queued + running images (and requests held by routers), averaged over the window
    reason: str
    message: str = ""
    last_scale_time: str | None = None


class LastFailure(_Wire):
    """The most recent failure; kept after recovery, ``time`` moves only when the failure changes."""

    reason: str
    message: str
    exit_code: int | None = None
    time: str | None = None


class ImageModelStatus(_Wire):
    phase: Phase | None = None
    observed_generation: int | None = None
    source: str | None = None
    smoke_test: bool | None = None
    endpoint: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    ready: str | None = None  # "readyReplicas/replicas", the Ready printer column
    selector: str | None = None  # the inference pods' label selector, read through the scale subresource
    cache: CacheStatus | None = None
    autoscaling: AutoscalingStatus | None = None  # the autoscaler's; the reconcile never writes it
    last_failure: LastFailure | None = None
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, raw: object) -> ImageModelStatus:
        """A stored ``status``, field by field: a field that does not parse counts as absent."""
        if not isinstance(raw, Mapping):
            return cls()
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            broken = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        try:
            return cls.model_validate({k: v for k, v in raw.items() if k not in broken})
        except ValidationError:
            return cls()
