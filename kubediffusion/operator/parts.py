"""What the manifest builders share: their context, the cache volume, metadata, security, scheduling, and
the model server's container parts every engine has (its settings, probes, resources).

Pure: no API calls, no environment, no clock (see :mod:`kubediffusion.operator.resources`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import SHAREABLE_ACCESS_MODES, HardwareProfile, ImageModelSpec
from kubediffusion.operator.policy import HTTPS_ONLY, DownloadPolicy

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a builder needs besides the spec, all resolved by the caller."""

    owner: names.Owner
    image: str
    hardware: HardwareProfile
    download: DownloadPolicy = HTTPS_ONLY
    otlp_endpoint: str = ""  # where the model server exports its spans (the operator's setting); "" = none


@dataclass(frozen=True)
class CacheVolume:
    """The claim mounted at /models and where the pipeline of the spec's source lives under it."""

    claim_name: str
    model_dir: str
    owned: bool  # created by the operator (im-<name>-cache), as opposed to existing/pvc source


def cache_volume(spec: ImageModelSpec, model: str) -> CacheVolume:
    """``model_dir`` of a source that is downloaded is its own directory, ``/models/<cache-key>``: a new
    source goes beside the copy that serves (:mod:`kubediffusion.operator.cache`)."""
    if spec.source.pvc is not None:
        path = spec.source.pvc.path.strip("/")
        model_dir = f"{names.MODELS_MOUNT}/{path}" if path else names.MODELS_MOUNT
        return CacheVolume(spec.source.pvc.claim_name, model_dir, owned=False)
    model_dir = names.cache_dir(spec.weights_key())
    if spec.cache.existing_claim:
        return CacheVolume(spec.cache.existing_claim, model_dir, owned=False)
    return CacheVolume(names.cache_claim_name(model), model_dir, owned=True)


def pinned_to_one_node(spec: ImageModelSpec, claim_access_modes: list[str] | None = None) -> bool:
    """Whether every pod that mounts the shared cache must run on one node (a ReadWriteOnce-like claim).

    ``claim_access_modes``: of the claim as it exists (an existing claim or a pvc source); else the
    access mode the operator asks for. A model of another engine than diffusers mounts no cache.
    """
    if spec.per_node_cache or not spec.needs_weights:
        return False
    modes = claim_access_modes if claim_access_modes else [spec.cache.access_mode]
    return not SHAREABLE_ACCESS_MODES & set(modes)


def metadata(name: str, owner: names.Owner, labels: dict[str, str], *, owned: bool = True) -> Manifest:
    meta: Manifest = {"name": name, "namespace": owner.namespace, "labels": dict(labels)}
    if owned:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# Pod Security Standard "restricted": non-root, no escalation, no capabilities, RuntimeDefault seccomp.
def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": names.RUN_AS_USER,
        "runAsGroup": names.RUN_AS_USER,
        "fsGroup": names.RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_env() -> list[Manifest]:
    """The root filesystem is read-only: every cache a library may write goes to the /tmp emptyDir."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
    ]


def scheduling(hardware: HardwareProfile, *, pin: str | None = None) -> Manifest:
    """nodeSelector, tolerations and affinity of the hardware; ``pin``: a model whose pods must share a node.

    A ReadWriteOnce cache attaches to one node at a time, so every pod that mounts it (cache Job and
    serving pods alike) is required onto the node of the other pods of the model (``kubernetes.io/hostname``).
    The first one may go anywhere (a pod that matches its own term schedules when nothing else does), so
    the volume is created or attached wherever that is, and the others follow it there.
    """
    out: Manifest = {}
    if hardware.node_selector:
        out["nodeSelector"] = dict(hardware.node_selector)
    if hardware.tolerations:
        out["tolerations"] = [dict(t) for t in hardware.tolerations]
    affinity: Manifest = dict(hardware.affinity or {})
    if pin is not None:
        term = {"labelSelector": {"matchLabels": {names.MODEL_LABEL: pin}}, "topologyKey": "kubernetes.io/hostname"}
        pod_affinity = dict(affinity.get("podAffinity") or {})
        required = [*(pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or []), term]
        affinity["podAffinity"] = {**pod_affinity, "requiredDuringSchedulingIgnoredDuringExecution": required}
    if affinity:
        out["affinity"] = affinity
    return out


def compact_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def queue_settings(spec: ImageModelSpec) -> dict[str, str]:
    """``KD_INFERENCE_*`` of the queue and batching, whatever the engine."""
    serving = spec.serving
    return {
        "MAX_BATCH_SIZE": str(serving.max_batch_size),
        "BATCH_WINDOW_MS": str(serving.batch_window_ms),
        "MAX_QUEUE": str(serving.max_queue),
    }


def request_settings(spec: ImageModelSpec) -> dict[str, str]:
    """``KD_INFERENCE_*`` of what a valid request is (the router reads the same from the spec)."""
    return {
        "DEFAULTS": compact_json(spec.effective_defaults.model_dump(mode="json", by_alias=True)),
        "LIMITS": compact_json(spec.effective_limits.model_dump(mode="json", by_alias=True)),
        "PRESETS": compact_json(
            {k: v.model_dump(mode="json", by_alias=True, exclude_none=True) for k, v in spec.presets.items()}
        ),
    }


def container_resources(hardware: HardwareProfile) -> Manifest:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if hardware.gpus > 0:
        requests[hardware.gpu_resource_name] = limits[hardware.gpu_resource_name] = str(hardware.gpus)
    if hardware.cpu:
        requests["cpu"] = hardware.cpu
    if hardware.memory:
        requests["memory"] = limits["memory"] = hardware.memory
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probe(path: str, *, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": names.PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def server_probes() -> Manifest:
    """/health answers while the weights load (or the engine starts); /readyz only once ready and warm."""
    return {
        "startupProbe": _probe("/health", period=5, failures=120),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/health", period=10, failures=3),
    }
