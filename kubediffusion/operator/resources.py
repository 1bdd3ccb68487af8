"""Pure manifest builders: typed spec in, plain dicts out. No API calls, no environment, no clock.

Every builder returns the *whole* desired object (apiVersion, kind, metadata with fixed name, labels
and owner reference), ready for server-side apply. The reconcile decides ``replicas`` (0 while no
copy of the weights can serve), which copy the pods read, and resolves the hardware profile and image
before calling them. The cache Job is built in :mod:`.fetching`, the pod of an engine other than
diffusers in :mod:`.engine_pod`, the shared parts are :mod:`.parts`.
"""

from __future__ import annotations

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import CacheCopy
from kubediffusion.operator.engine_pod import engine_pod_spec
from kubediffusion.operator.fetching import build_cache_job, fetch_args, fetch_containers
from kubediffusion.operator.parts import (
    CacheVolume,
    Context,
    Manifest,
    cache_volume,
    compact_json,
    container_resources,
    container_security_context,
    digest,
    metadata,
    pod_security_context,
    queue_settings,
    request_settings,
    scheduling,
    scratch_env,
    server_probes,
)
from kubediffusion.operator.pipelines import extra_volumes, pipeline_settings

# The builders' shared parts and the cache Job live in their own modules; importable from here as before.
__all__ = [
    "CacheVolume",
    "Context",
    "build_cache_job",
    "build_cache_pvc",
    "build_deployment",
    "build_service",
    "cache_volume",
    "container_resources",
    "container_security_context",
    "digest",
    "fetch_args",
    "pod_security_context",
]


def build_cache_pvc(spec: ImageModelSpec, owner: names.Owner) -> Manifest | None:
    """The operator-owned cache claim, or None (existing claim / pvc source / another engine than diffusers).

    With ``cache.retainOnDelete`` (the default) the claim has no owner reference, so deleting the
    ImageModel keeps the downloaded weights; re-creating the model finds them (the Job sees the marker).
    """
    volume = cache_volume(spec, owner.name)
    if not spec.needs_weights or not volume.owned or spec.per_node_cache:
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
        "metadata": metadata(
            volume.claim_name,
            owner,
            names.labels(owner.name, "cache", smoke_test=spec.is_smoke_test),
            owned=not spec.cache.retain_on_delete,
        ),
        "spec": pvc_spec,
    }


def inference_env(spec: ImageModelSpec, model: str, model_dir: str, gpus: int) -> list[Manifest]:
    """Everything the server needs is in env (docs/contracts.md): a pod's command runs as-is locally."""
    serving = spec.serving
    settings: dict[str, str] = {
        "MODEL_DIR": model_dir,
        "MODEL_NAME": model,
        "ALIASES": compact_json(list(spec.aliases)),
        "PIPELINE": spec.pipeline,
        "DTYPE": spec.effective_dtype(gpus),
        "DEVICE": "cuda" if gpus > 0 else "cpu",
        "HOST": "0.0.0.0",
        "PORT": str(names.PORT),
        **queue_settings(spec),
        "WARMUP": str(serving.warmup).lower(),
        "COMPILE": str(serving.compile).lower(),
        **request_settings(spec),
        **pipeline_settings(spec, model_dir),
    }
    env = [{"name": f"KD_INFERENCE_{key}", "value": value} for key, value in settings.items()]
    return [*env, {"name": "HF_HUB_OFFLINE", "value": "1"}, *scratch_env()]


def _cache_volume(spec: ImageModelSpec, ctx: Context, volume: CacheVolume) -> Manifest:
    if not spec.per_node_cache:
        return {"name": "cache", "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True}}
    # perNode: a claim per pod, made from this template (and deleted with the pod) by Kubernetes itself.
    claim_spec: Manifest = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.cache.size}}}
    if spec.cache.storage_class_name is not None:
        claim_spec["storageClassName"] = spec.cache.storage_class_name
    labels = names.labels(ctx.owner.name, "cache", smoke_test=spec.is_smoke_test)
    return {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"metadata": {"labels": labels}, "spec": claim_spec}}}


def build_deployment(
    spec: ImageModelSpec,
    ctx: Context,
    *,
    replicas: int,
    weights: CacheCopy | None = None,
    pin: bool = False,
) -> Manifest:
    """The model's pods, reading the weights at ``weights`` (default: the spec's own copy).

    The reconcile decides ``replicas`` (0 while no copy can serve), ``weights`` (the copy that serves
    while a new one downloads beside it), ``pin`` (a ReadWriteOnce cache: every pod on one node,
    see :func:`~kubediffusion.operator.parts.scheduling`). ``ctx.otlp_endpoint`` reaches the model
    server (and only it) as KD_INFERENCE_OTLP_ENDPOINT. A perNode cache is a generic ephemeral
    volume per pod that an init container running fetch-model fills before the server starts. A model
    of another engine than diffusers reads no weights (``weights`` and ``pin`` do not apply to it): its
    pod is :func:`~kubediffusion.operator.engine_pod.engine_pod_spec`.
    """
    owner = ctx.owner
    pod_labels = names.labels(owner.name, "inference", smoke_test=spec.is_smoke_test)
    annotations = {"kubectl.kubernetes.io/default-container": "inference"}
    if spec.needs_weights:
        pod_spec, weights = _weights_pod_spec(spec, ctx, weights, pin=pin)
        if spec.per_node_cache:
            pod_labels[names.DOWNLOADS_LABEL] = "true"  # its init container downloads (the chart's NetworkPolicy)
        # New weights roll the pods even when nothing else in the template changed.
        annotations |= {names.CACHE_KEY_ANNOTATION: weights.key, names.CACHE_PATH_ANNOTATION: weights.path}
    else:
        pod_spec = engine_pod_spec(spec, ctx)
        pod_labels[names.ENGINE_LABEL] = spec.engine.name  # e.g. for a NetworkPolicy that lets it reach its engine
    if ctx.otlp_endpoint:  # the operator's collector: our server exports its spans there (docs/observability.md)
        server = next(c for c in pod_spec["containers"] if c["name"] == "inference")
        server["env"] = [*server["env"], {"name": "KD_INFERENCE_OTLP_ENDPOINT", "value": ctx.otlp_endpoint}]
    if ctx.hardware.priority_class_name:
        pod_spec["priorityClassName"] = ctx.hardware.priority_class_name
    if ctx.hardware.runtime_class_name:
        pod_spec["runtimeClassName"] = ctx.hardware.runtime_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(names.deployment_name(owner.name), owner, pod_labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": 1800,
            "selector": {"matchLabels": names.selector(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": dict(pod_labels), "annotations": annotations}, "spec": pod_spec},
        },
    }


def _weights_pod_spec(
    spec: ImageModelSpec, ctx: Context, weights: CacheCopy | None, *, pin: bool
) -> tuple[Manifest, CacheCopy]:
    """The diffusers engine's pod: our server reading the weights at ``weights`` from the cache volume."""
    owner = ctx.owner
    volume = cache_volume(spec, owner.name)
    weights = weights or CacheCopy(key=spec.weights_key(), path=volume.model_dir)
    extra_volumes_, extra_mounts = extra_volumes(spec)
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        **scheduling(ctx.hardware, pin=owner.name if pin else None),
        "containers": [
            {
                "name": "inference",
                "image": ctx.image,
                "command": ["kubediffusion", "inference"],
                "env": inference_env(spec, owner.name, weights.path, ctx.hardware.gpus),
                "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT, "protocol": "TCP"}],
                "resources": container_resources(ctx.hardware),
                "securityContext": container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                **server_probes(),
                "volumeMounts": [
                    {"name": "cache", "mountPath": names.MODELS_MOUNT, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    *extra_mounts,
                ],
            }
        ],
        "volumes": [
            _cache_volume(spec, ctx, volume),
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            *extra_volumes_,
        ],
    }
    if spec.per_node_cache:
        args = fetch_args(spec, volume, ctx.download, dest=weights.path)
        pod_spec["initContainers"] = fetch_containers(spec, ctx, volume, args, weights_dir=weights.path)
    return pod_spec, weights


def build_service(spec: ImageModelSpec, owner: names.Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            names.service_name(owner.name), owner, names.labels(owner.name, "inference", smoke_test=spec.is_smoke_test)
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(owner.name),
            "ports": [{"name": names.PORT_NAME, "port": names.PORT, "targetPort": names.PORT_NAME, "protocol": "TCP"}],
        },
    }
