"""The pod of a model whose images another engine makes (``spec.engine``, docs/engines/README.md).

Our server runs in adapter mode (``kubediffusion inference`` with ``KD_INFERENCE_ENGINE``), or as the
stub: same contract, queue, metrics and probes as with diffusers, but no weights, so no cache volume,
no cache Job, no GPU, and the small adapter image (no torch). ``/readyz`` follows the engine, so the pod
is Ready only while the engine answers.

A sidecar engine (``spec.engine.image``) is a native sidecar: an init container with ``restartPolicy:
Always``. It starts before our server and, on deletion or a rollout, is stopped only after our server
has finished the requests it holds (a plain second container would get SIGTERM at the same moment and
fail them). It gets the model's GPU resources and scheduling; our server calls it on 127.0.0.1, so it
need not listen on the pod's address, and that is also why it has no probes of its own (the kubelet
probes the pod's address): our ``/readyz`` is the readiness of both, and a crashing engine is restarted
and reported (ModelLoadFailed) like any container.

The engine's credential (a Secret key) and a ComfyUI workflow (a ConfigMap key) are mounted as files into
our container only; the operator never reads either. Pure: no API calls, no environment, no clock.
"""

from __future__ import annotations

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.operator.parts import (
    Context,
    Manifest,
    compact_json,
    container_resources,
    container_security_context,
    pod_security_context,
    queue_settings,
    request_settings,
    scheduling,
    server_probes,
)
from kubediffusion.operator.pipelines import pipeline_settings
from kubediffusion.operator.problems import ENGINE_CONTAINER, SERVER_CONTAINER

CREDENTIALS_DIR = "/var/run/kubediffusion/engine-credentials"
CREDENTIALS_FILE = f"{CREDENTIALS_DIR}/credential"
WORKFLOW_DIR = "/var/run/kubediffusion/engine-workflow"
WORKFLOW_FILE = f"{WORKFLOW_DIR}/workflow.json"
# Our server relays images and holds a queue: a small Python process. Without a sidecar, the spec's
# cpu and memory (if any) are its own.
ADAPTER_CPU, ADAPTER_MEMORY, ADAPTER_MEMORY_LIMIT = "100m", "256Mi", "1Gi"
SHM = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}


def engine_env(spec: ImageModelSpec, model: str) -> list[Manifest]:
    """``KD_INFERENCE_*`` of our server in front of the engine (docs/engines/README.md, Settings)."""
    engine = spec.engine
    settings: dict[str, str] = {
        "ENGINE": engine.name,
        "MODEL_NAME": model,
        "ALIASES": compact_json(list(spec.aliases)),
        "HOST": "0.0.0.0",
        "PORT": str(names.PORT),
        **queue_settings(spec),
        **request_settings(spec),
        **pipeline_settings(spec, ""),
    }
    optional: dict[str, str | None] = {
        "ENGINE_URL": engine.upstream_url,
        "ENGINE_MODEL": engine.model,
        "ENGINE_SAMPLER": engine.sampler,
        "ENGINE_TIMEOUT_SECONDS": None if engine.timeout_seconds is None else str(engine.timeout_seconds),
        "ENGINE_MAX_N": None if engine.max_n is None else str(engine.max_n),
        "ENGINE_SIZES": None if engine.sizes is None else compact_json(list(engine.sizes)),
        "ENGINE_FORWARD_EXTENSIONS": None
        if engine.forward_extensions is None
        else str(engine.forward_extensions).lower(),
        "ENGINE_API_KEY_FILE": CREDENTIALS_FILE if engine.credentials_secret_ref is not None else None,
        "ENGINE_WORKFLOW": WORKFLOW_FILE if engine.workflow_config_map_ref is not None else None,
    }
    settings |= {key: value for key, value in optional.items() if value is not None}
    env = [{"name": f"KD_INFERENCE_{key}", "value": value} for key, value in settings.items()]
    return [*env, {"name": "HOME", "value": "/tmp"}]


def _server_resources(spec: ImageModelSpec, ctx: Context) -> Manifest:
    own = spec.engine.image is None  # no sidecar: the spec's cpu and memory are our server's (never a GPU)
    cpu = (ctx.hardware.cpu if own else None) or ADAPTER_CPU
    memory = ctx.hardware.memory if own else None
    return {
        "requests": {"cpu": cpu, "memory": memory or ADAPTER_MEMORY},
        "limits": {"memory": memory or ADAPTER_MEMORY_LIMIT},
    }


def _files(spec: ImageModelSpec) -> tuple[list[Manifest], list[Manifest]]:
    """The credential and workflow volumes and their read-only mounts in our container."""
    engine = spec.engine
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    secret = engine.credentials_secret_ref
    if secret is not None:
        items = [{"key": secret.key, "path": CREDENTIALS_FILE.rsplit("/", 1)[1]}]
        # 0440: readable by the pod's group (fsGroup), which our server runs as, and no one else.
        volumes.append(
            {"name": "engine-credentials", "secret": {"secretName": secret.name, "items": items, "defaultMode": 0o440}}
        )
        mounts.append({"name": "engine-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
    workflow = engine.workflow_config_map_ref
    if workflow is not None:
        items = [{"key": workflow.key, "path": WORKFLOW_FILE.rsplit("/", 1)[1]}]
        volumes.append({"name": "engine-workflow", "configMap": {"name": workflow.name, "items": items}})
        mounts.append({"name": "engine-workflow", "mountPath": WORKFLOW_DIR, "readOnly": True})
    return volumes, mounts


def sidecar_container(spec: ImageModelSpec, ctx: Context) -> Manifest:
    """The engine itself, from ``spec.engine.image``, with the model's GPUs, cpu and memory.

    Its root filesystem stays writable (engines write outputs and caches beside their code); /tmp is its
    own emptyDir and HOME unless its env says otherwise.
    """
    engine = spec.engine
    assert engine.image is not None
    env = {"HOME": "/tmp", **{var.name: var.value for var in engine.env or []}}
    container: Manifest = {
        "name": ENGINE_CONTAINER,
        "image": engine.image,
        "restartPolicy": "Always",  # a native sidecar: up before our server, stopped after it
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "resources": container_resources(ctx.hardware),
        "securityContext": {**container_security_context(), "readOnlyRootFilesystem": False},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "engine-tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if engine.args is not None:
        container["args"] = list(engine.args)
    return container


def engine_pod_spec(spec: ImageModelSpec, ctx: Context) -> Manifest:
    """The pod: our server (``ctx.image``), and the engine's sidecar when ``spec.engine.image`` is set."""
    volumes, mounts = _files(spec)
    server: Manifest = {
        "name": SERVER_CONTAINER,
        "image": ctx.image,
        "command": ["kubediffusion", "inference"],
        "env": engine_env(spec, ctx.owner.name),
        "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT, "protocol": "TCP"}],
        "resources": _server_resources(spec, ctx),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **server_probes(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }
    pod: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        **scheduling(ctx.hardware),
        "containers": [server],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
    }
    if spec.engine.image is not None:
        pod["initContainers"] = [sidecar_container(spec, ctx)]
        pod["volumes"] += [{"name": "engine-tmp", "emptyDir": {}}, SHM]
    return pod
