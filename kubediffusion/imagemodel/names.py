"""Fixed names and labels of an ImageModel's children (docs/contracts.md): no API calls, no clock."""

from __future__ import annotations

from dataclasses import dataclass

from kubediffusion.imagemodel.resource import API_VERSION, KIND

FIELD_MANAGER = "kubediffusion-operator"
MODEL_LABEL = "kubediffusion.io/model"
COMPONENT_LABEL = "app.kubernetes.io/component"
SMOKE_TEST_LABEL = "kubediffusion.io/smoke-test"
DOWNLOADS_LABEL = "kubediffusion.io/downloads"  # "true" on model pods that download (cache.mode perNode)
ENGINE_LABEL = "kubediffusion.io/engine"  # on model pods of an engine other than diffusers: its name
CACHE_KEY_ANNOTATION = "kubediffusion.io/cache-key"
TEMPLATE_HASH_ANNOTATION = "kubediffusion.io/template-hash"
# On the cache Job: the directory it fills, and the copies it must keep (comma-separated; it prunes the rest).
CACHE_PATH_ANNOTATION = "kubediffusion.io/cache-path"
CACHE_KEEP_ANNOTATION = "kubediffusion.io/cache-keep"
CACHE_SIZE_ANNOTATION = "kubediffusion.io/cache-size"  # on the cache Job's pod template

MODELS_MOUNT = "/models"
MODEL_SUBDIR = "model"  # where operators before side-by-side swaps kept the one copy (/models/model)
# Written by fetch-model into a filled cache directory: source, revision, bytes, completedAt.
CACHE_MARKER = ".kubediffusion-complete.json"
PORT = 8000
PORT_NAME = "http"
RUN_AS_USER = 1000


def deployment_name(model: str) -> str:
    return f"im-{model}"


def service_name(model: str) -> str:
    return f"im-{model}"


def cache_claim_name(model: str) -> str:
    return f"im-{model}-cache"


def cache_job_name(model: str) -> str:
    return f"im-{model}-cache"


def cache_dir(key: str) -> str:
    """Where the copy of a source with this cache key lives in the cache volume: one directory per source,
    so a new source downloads beside the copy that serves (docs/contracts.md)."""
    return f"{MODELS_MOUNT}/{key}"


def endpoint(model: str, namespace: str) -> str:
    return f"http://{service_name(model)}.{namespace}.svc:{PORT}"


def labels(model: str, component: str, *, smoke_test: bool = False) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "kubediffusion-inference",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        COMPONENT_LABEL: component,
        MODEL_LABEL: model,
    }
    if smoke_test:
        out[SMOKE_TEST_LABEL] = "true"
    return out


def selector(model: str) -> dict[str, str]:
    """Inference pods only: cache Job pods carry the model label too, with component ``cache``."""
    return {MODEL_LABEL: model, COMPONENT_LABEL: "inference"}


def selector_string(model: str) -> str:
    """:func:`selector` as a label selector string (status.selector, read through the scale subresource)."""
    return ",".join(f"{key}={value}" for key, value in selector(model).items())


@dataclass(frozen=True)
class Owner:
    """The ImageModel that owns the children (its uid comes from the API server)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, object]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
