"""The model server's pipeline settings (``KD_INFERENCE_ADAPTERS``, ``_SCHEDULER``, ``_COMPONENTS``,
``_SAFETY``; docs/pipelines.md) from ``spec.adapters``/``scheduler``/``components``/``safety``, and the
volumes that bring a pvc source of extra weights into the pod.

Pure: no API calls, no environment, no clock. The values are the server's own config types
(:mod:`kubediffusion.api.pipelines`) dumped camelCase, so what the operator writes is what the server
parses; a setting the spec leaves out is not set at all (the server's default, and no change to the
pods of a model that has none). Fetched weights live inside the model's copy (``weights_dir``, which
the pods are pointed at), pvc sources under ``/extras`` (:mod:`kubediffusion.imagemodel.pipelines`).
"""

from __future__ import annotations

from kubediffusion.api.pipelines import ComponentConfig
from kubediffusion.imagemodel.pipelines import CHECKER_DIR, EXTRAS_MOUNT
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.operator.parts import Manifest, compact_json


def pipeline_settings(spec: ImageModelSpec, weights_dir: str) -> dict[str, str]:
    """``KD_INFERENCE_*`` (without the prefix) of the pipeline; another engine than diffusers gets only
    the blocked terms of ``safety`` (its server refuses the rest)."""
    safety = spec.safety
    if not spec.needs_weights:
        if safety is None or not safety.blocked_terms:
            return {}
        engine_safety = {"checker": "none", "blockedTerms": list(safety.blocked_terms)}
        return {"SAFETY": compact_json(engine_safety)}
    paths = {extra.subdir: extra.path(weights_dir) for extra in spec.extras}
    out: dict[str, str] = {}
    if spec.adapters:
        configs = [adapter.config(paths[f"adapters/{adapter.name}"]) for adapter in spec.adapters]
        out["ADAPTERS"] = compact_json([config.model_dump(by_alias=True, exclude_none=True) for config in configs])
    if spec.scheduler is not None:
        out["SCHEDULER"] = compact_json(spec.scheduler.model_dump(mode="json", by_alias=True))
    parts = spec.components.items() if spec.components is not None else []
    components: dict[str, ComponentConfig] = {name: part.config(paths[f"components/{name}"]) for name, part in parts}
    if components:
        dumped = {name: config.model_dump(by_alias=True, exclude_none=True) for name, config in components.items()}
        out["COMPONENTS"] = compact_json(dumped)
    if safety is not None:
        config = safety.config(paths.get(CHECKER_DIR, ""))
        out["SAFETY"] = compact_json(config.model_dump(mode="json", by_alias=True))
    return out


def pipeline_env(spec: ImageModelSpec, weights_dir: str) -> list[Manifest]:
    settings = pipeline_settings(spec, weights_dir)
    return [{"name": f"KD_INFERENCE_{key}", "value": value} for key, value in settings.items()]


def extra_volumes(spec: ImageModelSpec) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, the server's mounts) of the pvc sources of extra weights: each claim once, read-only,
    each source's directory mounted at ``/extras/<subdir>`` (a subPath of its claim)."""
    volumes: dict[str, Manifest] = {}
    mounts: list[Manifest] = []
    for extra in spec.extras:
        pvc = extra.source.pvc
        if pvc is None:
            continue
        volume = volumes.setdefault(
            pvc.claim_name,
            {
                "name": f"extras-{len(volumes)}",
                "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True},
            },
        )
        mount: Manifest = {"name": volume["name"], "mountPath": f"{EXTRAS_MOUNT}/{extra.subdir}", "readOnly": True}
        if pvc.path.strip("/"):
            mount["subPath"] = pvc.path.strip("/")
        mounts.append(mount)
    return list(volumes.values()), mounts
