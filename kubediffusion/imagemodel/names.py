"""Fixed names and labels of an ImageModel's children (docs/contracts.md): no API calls, no clock."""

from __future__ import annotations

from dataclasses import dataclass

from kubediffusion.imagemodel.resource import API_VERSION, KIND

FIELD_MANAGER = "kubediffusion-operator"
MODEL_LABEL = "kubediffusion.io/model"
COMPONENT_LABEL = "app.kubernetes.io/component"
SMOKE_TEST_LABEL = "kubediffusion.io/smoke-test"
CACHE_KEY_ANNOTATION = "kubediffusion.io/cache-key"
TEMPLATE_HASH_ANNOTATION = "kubediffusion.io/template-hash"

MODELS_MOUNT = "/models"
MODEL_SUBDIR = "model"
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
