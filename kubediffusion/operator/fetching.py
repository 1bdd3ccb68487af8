"""``kubediffusion fetch-model`` in a pod: its arguments, its container, and the cache Job that runs it.

A shared cache is filled by the cache Job (``im-<name>-cache``); a perNode cache by an init container
of each model pod (:func:`fetch_container` serves both). Pure: no API calls, no environment, no clock.

Extra weights of the pipeline (adapters, components, a checker repo: ``spec.extras``) are fetched into
the model's copy, one fetch-model container each (:func:`fetch_containers`), after the model's own:
its copy is swapped into place whole, so anything written inside it earlier would go. Each gets the same
download policy and limits as the model's source, and its own termination message (its revision).
"""

from __future__ import annotations

from collections.abc import Sequence

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.pipelines import Extra
from kubediffusion.imagemodel.spec import ImageModelSpec, SecretKeyRef
from kubediffusion.operator.parts import (
    CacheVolume,
    Context,
    Manifest,
    cache_volume,
    container_security_context,
    digest,
    metadata,
    pod_security_context,
    scheduling,
    scratch_env,
)
from kubediffusion.operator.policy import HTTPS_ONLY, DownloadPolicy
from kubediffusion.operator.problems import FETCH_CONTAINER

FETCH_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}


def fetch_args(
    spec: ImageModelSpec,
    volume: CacheVolume,
    download: DownloadPolicy = HTTPS_ONLY,
    *,
    dest: str | None = None,
    keep: Sequence[str] | None = None,
) -> list[str]:
    """Arguments of ``kubediffusion fetch-model`` for the spec's source.

    ``keep`` (a shared cache): ``--prune`` every other copy but these (the pods still read them); None
    for a volume of its own (a perNode cache). An http(s) archive gets the download policy and, in a
    claim the operator sized, ``--max-bytes`` of that size (an archive cannot fill the volume past it).
    Other sources get neither: fetch-model does not apply them there, and a policy change then does not
    replace their Jobs.
    """
    source = spec.source
    args = ["--dest", dest or volume.model_dir, "--termination-log", "/dev/termination-log"]
    if keep is not None:
        args.append("--prune")
        for path in keep:
            args += ["--keep", path]
    if source.huggingface is not None:
        return [*args, "--huggingface", source.huggingface.repo, "--revision", source.huggingface.revision]
    if source.url is not None:
        return [*args, *_url_args(spec, volume, download, source.url)]
    if source.tiny is not None:
        return [*args, "--tiny", source.tiny.kind]
    raise ValueError("a pvc source needs no cache Job")


def _url_args(spec: ImageModelSpec, volume: CacheVolume, download: DownloadPolicy, url: str) -> list[str]:
    args = ["--url", url]
    if url.startswith(("http://", "https://")):
        args += download.fetch_flags()
        if volume.owned or spec.per_node_cache:
            args += ["--max-bytes", spec.cache.size]
    return args


def extra_fetch_args(
    spec: ImageModelSpec, extra: Extra, volume: CacheVolume, download: DownloadPolicy, *, weights_dir: str
) -> list[str]:
    """fetch-model for one extra weight source, into ``<weights_dir>/<subdir>`` (never pruning)."""
    args = ["--dest", extra.path(weights_dir), "--termination-log", "/dev/termination-log", "--content", "weights"]
    if extra.file is not None:
        args += ["--file", extra.file]
    source = extra.source
    if source.huggingface is not None:
        return [*args, "--huggingface", source.huggingface.repo, "--revision", source.huggingface.revision]
    if source.url is not None:
        return [*args, *_url_args(spec, volume, download, source.url)]
    raise ValueError("a pvc source is mounted, not fetched")


def fetch_containers(
    spec: ImageModelSpec, ctx: Context, volume: CacheVolume, model_args: list[str], *, weights_dir: str
) -> list[Manifest]:
    """The model's fetch container, then one per fetched extra weight source, in the order they must run."""
    hf = spec.source.huggingface
    out = [fetch_container(spec, ctx, model_args, token=hf.token_secret_ref if hf is not None else None)]
    for extra in spec.extras:
        if not extra.fetched:
            continue
        args = extra_fetch_args(spec, extra, volume, ctx.download, weights_dir=weights_dir)
        token = extra.source.huggingface.token_secret_ref if extra.source.huggingface is not None else None
        out.append(fetch_container(spec, ctx, args, name=extra.container, token=token))
    return out


def fetch_container(
    spec: ImageModelSpec,
    ctx: Context,
    args: list[str],
    *,
    name: str = FETCH_CONTAINER,
    token: SecretKeyRef | None = None,
) -> Manifest:
    """fetch-model writing the cache volume (mounted read-write at /models); ``token``: a Hugging Face
    token's Secret key (the model's own source, or an extra weight source's)."""
    env = scratch_env()
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return {
        "name": name,
        "image": ctx.image,
        "command": ["kubediffusion", "fetch-model"],
        "args": args,
        "env": env,
        "resources": FETCH_RESOURCES,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "cache", "mountPath": names.MODELS_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def build_cache_job(
    spec: ImageModelSpec,
    ctx: Context,
    *,
    dest: str | None = None,
    keep: Sequence[str] = (),
    pin: bool = False,
) -> Manifest | None:
    """The Job that fills the shared cache (None for a pvc source, a perNode cache or another engine).

    It downloads into ``dest`` (default ``/models/<cache-key>``) and prunes every other copy but
    ``keep``. It schedules like the model's pods (same nodeSelector/tolerations/affinity, and with
    ``pin`` on their node), so a zonal volume is created where the GPUs are. A Job's pod template is
    immutable: the annotations let the reconcile notice a change and replace the Job instead of
    failing to apply it (a new source or keep-list re-runs even a finished Job; fetch-model then finds
    its copy complete and only prunes).
    """
    if not spec.needs_weights or not spec.source.needs_fetch or spec.per_node_cache:
        return None
    owner = ctx.owner
    volume = cache_volume(spec, owner.name)
    dest = dest or volume.model_dir
    pod_labels = names.labels(owner.name, "cache", smoke_test=spec.is_smoke_test)
    model_args = fetch_args(spec, volume, ctx.download, dest=dest, keep=keep)
    *first, last = fetch_containers(spec, ctx, volume, model_args, weights_dir=dest)
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        **scheduling(ctx.hardware, pin=owner.name if pin else None),
        **({"initContainers": first} if first else {}),  # one after the other: the model's copy first
        "containers": [last],
        "volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": volume.claim_name}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    # The claim's size in the template: a Job that failed for want of room re-runs once the claim grows.
    template = {
        "metadata": {"labels": dict(pod_labels), "annotations": {names.CACHE_SIZE_ANNOTATION: spec.cache.size}},
        "spec": pod_spec,
    }
    meta = metadata(names.cache_job_name(owner.name), owner, pod_labels)
    meta["annotations"] = {
        names.CACHE_KEY_ANNOTATION: spec.weights_key(),
        names.CACHE_PATH_ANNOTATION: dest,
        names.CACHE_KEEP_ANNOTATION: ",".join(keep),
        names.TEMPLATE_HASH_ANNOTATION: digest(template),
    }
    # Every container is fetch-model with extra weights (at most 20 rules: one without a name for all).
    permanent = {} if first else {"containerName": FETCH_CONTAINER}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 2,
            # fetch-model exits 2 when a retry cannot help (404, unsafe archive): fail the Job at once.
            "podFailurePolicy": {
                "rules": [
                    {"action": "FailJob", "onExitCodes": {**permanent, "operator": "In", "values": [2]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": template,
        },
    }
