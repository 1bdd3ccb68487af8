"""All Kubernetes API access of the operator, in one small module, with plain dicts in and out.

lightkube's sync client does the plumbing (config, paths, encoding, typed decoding); this module keeps
the operator's interface to it small: builders and status are pure functions on dicts, so objects go
in as dicts and come back as dicts (``to_dict`` of lightkube's typed models, which drops fields the
models do not know: only fields the operator reads matter here).

Writes are server-side apply of whole objects (field manager ``kubediffusion-operator``, force), so
applying twice is a no-op and someone else's edit to a field we manage is taken back on the next
reconcile. The ImageModel's status is applied the same way on its status subresource: a field the
operator stops applying is removed by the API server. Tests point this at the real API server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import ApiError, Client
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod, Service
from lightkube.types import CascadeType, PatchType

from kubediffusion.imagemodel.names import FIELD_MANAGER
from kubediffusion.imagemodel.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

Obj = dict[str, Any]
TIMEOUT = 30.0

ImageModel = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

# kind -> resource; the only kinds the operator touches. No Secrets: the kubelet resolves a model's token
# Secret for the cache Job's pod, and the chart grants the operator no access to any (docs/security.md).
RESOURCES: dict[str, type[NamespacedResource]] = {
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "Service": Service,
    "Pod": Pod,
    "Job": Job,
    "Deployment": Deployment,
    KIND: ImageModel,
}


@dataclass
class KubeError(Exception):
    """A non-2xx answer from the API server; ``status`` is the HTTP code, ``message`` its reason."""

    status: int
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """lightkube raises ApiError for JSON error bodies and plain httpx2 errors for others: one KubeError."""
    try:
        yield
    except ApiError as exc:
        raise KubeError(exc.response.status_code, exc.status.message or str(exc)) from None
    except httpx2.HTTPStatusError as exc:
        raise KubeError(exc.response.status_code, exc.response.text[:500]) from None


def _plain(obj: Any) -> Obj:
    out: Obj = obj.to_dict()
    return out


class Kube:
    def __init__(self, client: Client) -> None:
        self.client = client

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Server-side apply the whole object; returns it as stored (with status)."""
        meta = obj["metadata"]
        with _answers():
            stored = self.client.patch(
                RESOURCES[obj["kind"]],
                meta["name"],
                dict(obj),
                namespace=meta["namespace"],
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )
        return _plain(stored)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            with _answers():
                return _plain(self.client.get(RESOURCES[kind], name, namespace=namespace))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, selector: Mapping[str, str]) -> list[Obj]:
        with _answers():
            return [_plain(o) for o in self.client.list(RESOURCES[kind], namespace=namespace, labels=dict(selector))]

    def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        """Delete; the garbage collector removes dependents (``Foreground``: before the object goes). Absent is fine."""
        try:
            with _answers():
                self.client.delete(RESOURCES[kind], name, namespace=namespace, cascade=CascadeType(propagation))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Server-side apply the ImageModel's status subresource: fields left out of ``status`` are removed."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        try:
            with _answers():
                self.client.patch(
                    ImageModel.Status,
                    name,
                    body,
                    namespace=namespace,
                    patch_type=PatchType.APPLY,
                    field_manager=FIELD_MANAGER,
                    force=True,
                )
        except KubeError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise


def new_client() -> Client:
    """In-cluster service account, else $KUBECONFIG / ~/.kube/config."""
    return Client(field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(TIMEOUT))
