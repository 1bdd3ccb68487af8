"""Pure manifest builders: typed spec in, plain dicts out. No API calls, no environment, no clock.

Every builder returns the *whole* desired object (apiVersion, kind, metadata with fixed name, labels
and owner reference), ready for server-side apply. The reconcile decides ``replicas`` (0 until the
cache is ready) and resolves the hardware profile and image before calling them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import HardwareProfile, ImageModelSpec
from kubediffusion.operator.policy import HTTPS_ONLY, DownloadPolicy

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a builder needs besides the spec, all resolved by the caller."""

    owner: names.Owner
    image: str
    hardware: HardwareProfile
    download: DownloadPolicy = HTTPS_ONLY


@dataclass(frozen=True)
class CacheVolume:
    """The claim mounted at /models and where the pipeline lives under it."""

    claim_name: str
    model_dir: str
    owned: bool  # created by the operator (im-<name>-cache), as opposed to existing/pvc source


def cache_volume(spec: ImageModelSpec, model: str) -> CacheVolume:
    if spec.source.pvc is not None:
        path = spec.source.pvc.path.strip("/")
        model_dir = f"{names.MODELS_MOUNT}/{path}" if path else names.MODELS_MOUNT
        return CacheVolume(spec.source.pvc.claim_name, model_dir, owned=False)
    model_dir = f"{names.MODELS_MOUNT}/{names.MODEL_SUBDIR}"
    if spec.cache.existing_claim:
        return CacheVolume(spec.cache.existing_claim, model_dir, owned=False)
    return CacheVolume(names.cache_claim_name(model), model_dir, owned=True)


def _metadata(name: str, owner: names.Owner, labels: dict[str, str], *, owned: bool = True) -> Manifest:
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


def _scratch_env() -> list[Manifest]:
    """The root filesystem is read-only: every cache a library may write goes to the /tmp emptyDir."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
    ]


def build_cache_pvc(spec: ImageModelSpec, owner: names.Owner) -> Manifest | None:
    """The operator-owned cache claim, or None (existing claim / pvc source).

    With ``cache.retainOnDelete`` (the default) the claim has no owner reference, so deleting the
    ImageModel keeps the downloaded weights; re-creating the model finds them (the Job sees the marker).
    """
    volume = cache_volume(spec, owner.name)
    if not volume.owned:
        return None
    pvc_spec: Manifest = {
        "accessModes": [spec.cache.access_mode],
        "resources": {"requests": {"storage": spec.cache.size}},
    }
    if spec.cache.storage_class_name is not None:
        pvc_spec["storageClassName"] = spec.cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            volume.claim_name,
            owner,
            names.labels(owner.name, "cache", smoke_test=spec.is_smoke_test),
            owned=not spec.cache.retain_on_delete,
        ),
        "spec": pvc_spec,
    }


def fetch_args(spec: ImageModelSpec, volume: CacheVolume, download: DownloadPolicy = HTTPS_ONLY) -> list[str]:
    """Arguments of ``kubediffusion fetch-model`` for the spec's source.

    An http(s) archive gets the download policy and, in a claim the operator sized, ``--max-bytes`` of
    that size (an archive cannot fill the volume past it). Other sources get neither: fetch-model does
    not apply them there, and a policy change then does not replace their Jobs.
    """
    source = spec.source
    args = ["--dest", volume.model_dir, "--termination-log", "/dev/termination-log"]
    if source.huggingface is not None:
        return [*args, "--huggingface", source.huggingface.repo, "--revision", source.huggingface.revision]
    if source.url is not None:
        args += ["--url", source.url]
        if source.url.startswith(("http://", "https://")):
            args += download.fetch_flags()
            if volume.owned:
                args += ["--max-bytes", spec.cache.size]
        return args
    if source.tiny is not None:
        return [*args, "--tiny", source.tiny.kind]
    raise ValueError("a pvc source needs no cache Job")


def _scheduling(hardware: HardwareProfile) -> Manifest:
    out: Manifest = {}
    if hardware.node_selector:
        out["nodeSelector"] = dict(hardware.node_selector)
    if hardware.tolerations:
        out["tolerations"] = [dict(t) for t in hardware.tolerations]
    if hardware.affinity:
        out["affinity"] = dict(hardware.affinity)
    return out


def build_cache_job(spec: ImageModelSpec, ctx: Context) -> Manifest | None:
    """The Job that fills the cache once (None for a pvc source).

    It schedules like the model's pods (same nodeSelector/tolerations/affinity), so a zonal volume is
    created where the GPUs are. A Job's pod template is immutable: the template hash annotation lets the
    reconcile notice a change and replace the Job instead of failing to apply it.
    """
    if not spec.source.needs_fetch:
        return None
    owner = ctx.owner
    volume = cache_volume(spec, owner.name)
    env = _scratch_env()
    hf = spec.source.huggingface
    if hf is not None and hf.token_secret_ref is not None:
        ref = {"name": hf.token_secret_ref.name, "key": hf.token_secret_ref.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    pod_labels = names.labels(owner.name, "cache", smoke_test=spec.is_smoke_test)
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        **_scheduling(ctx.hardware),
        "containers": [
            {
                "name": "fetch",
                "image": ctx.image,
                "command": ["kubediffusion", "fetch-model"],
                "args": fetch_args(spec, volume, ctx.download),
                "env": env,
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}},
                "securityContext": container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "cache", "mountPath": names.MODELS_MOUNT},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": volume.claim_name}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    template = {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec}
    metadata = _metadata(names.cache_job_name(owner.name), owner, pod_labels)
    metadata["annotations"] = {
        names.CACHE_KEY_ANNOTATION: spec.source.cache_key(),
        names.TEMPLATE_HASH_ANNOTATION: digest(template),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 2,
            # fetch-model exits 2 when a retry cannot help (404, unsafe archive): fail the Job at once.
            "podFailurePolicy": {
                "rules": [
                    {"action": "FailJob", "onExitCodes": {"containerName": "fetch", "operator": "In", "values": [2]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": template,
        },
    }


def inference_env(spec: ImageModelSpec, model: str, model_dir: str, gpus: int) -> list[Manifest]:
    """Everything the server needs is in env (docs/contracts.md): a pod's command runs as-is locally."""
    serving = spec.serving

    def dumps(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    settings: dict[str, str] = {
        "MODEL_DIR": model_dir,
        "MODEL_NAME": model,
        "ALIASES": dumps(list(spec.aliases)),
        "PIPELINE": spec.pipeline,
        "DTYPE": spec.effective_dtype(gpus),
        "DEVICE": "cuda" if gpus > 0 else "cpu",
        "HOST": "0.0.0.0",
        "PORT": str(names.PORT),
        "MAX_BATCH_SIZE": str(serving.max_batch_size),
        "BATCH_WINDOW_MS": str(serving.batch_window_ms),
        "MAX_QUEUE": str(serving.max_queue),
        "WARMUP": str(serving.warmup).lower(),
        "COMPILE": str(serving.compile).lower(),
        "DEFAULTS": dumps(spec.effective_defaults.model_dump(mode="json", by_alias=True)),
        "LIMITS": dumps(spec.effective_limits.model_dump(mode="json", by_alias=True)),
        "PRESETS": dumps(
            {k: v.model_dump(mode="json", by_alias=True, exclude_none=True) for k, v in spec.presets.items()}
        ),
    }
    env = [{"name": f"KD_INFERENCE_{key}", "value": value} for key, value in settings.items()]
    return [*env, {"name": "HF_HUB_OFFLINE", "value": "1"}, *_scratch_env()]


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


def build_deployment(spec: ImageModelSpec, ctx: Context, *, replicas: int) -> Manifest:
    """The model's pods; ``replicas`` is 0 until the cache is ready (decided by the reconcile)."""
    owner = ctx.owner
    volume = cache_volume(spec, owner.name)
    pod_labels = names.labels(owner.name, "inference", smoke_test=spec.is_smoke_test)
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        **_scheduling(ctx.hardware),
        "containers": [
            {
                "name": "inference",
                "image": ctx.image,
                "command": ["kubediffusion", "inference"],
                "env": inference_env(spec, owner.name, volume.model_dir, ctx.hardware.gpus),
                "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT, "protocol": "TCP"}],
                "resources": container_resources(ctx.hardware),
                "securityContext": container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                # /health answers while the weights load; /readyz only once loaded and warm.
                "startupProbe": _probe("/health", period=5, failures=120),
                "readinessProbe": _probe("/readyz", period=5, failures=2),
                "livenessProbe": _probe("/health", period=10, failures=3),
                "volumeMounts": [
                    {"name": "cache", "mountPath": names.MODELS_MOUNT, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }
    if ctx.hardware.priority_class_name:
        pod_spec["priorityClassName"] = ctx.hardware.priority_class_name
    if ctx.hardware.runtime_class_name:
        pod_spec["runtimeClassName"] = ctx.hardware.runtime_class_name
    annotations = {
        "kubectl.kubernetes.io/default-container": "inference",
        # New weights roll the pods even when nothing else in the template changed.
        names.CACHE_KEY_ANNOTATION: spec.source.cache_key(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(names.deployment_name(owner.name), owner, pod_labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 1800,
            "selector": {"matchLabels": names.selector(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": dict(pod_labels), "annotations": annotations}, "spec": pod_spec},
        },
    }


def build_service(spec: ImageModelSpec, owner: names.Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.service_name(owner.name), owner, names.labels(owner.name, "inference", smoke_test=spec.is_smoke_test)
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(owner.name),
            "ports": [{"name": names.PORT_NAME, "port": names.PORT, "targetPort": names.PORT_NAME, "protocol": "TCP"}],
        },
    }
