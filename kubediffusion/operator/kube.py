"""All Kubernetes API access of the operator, in one small module, with plain dicts in and out.

lightkube's sync client does the plumbing (config, paths, encoding, typed decoding); this module keeps
the operator's interface to it small: builders and status are pure functions on dicts, so objects go
in as dicts and come back as dicts (``to_dict`` of lightkube's typed models, which drops fields the
models do not know: only fields the operator reads matter here).

Writes are server-side apply of whole objects (field manager ``kubediffusion-operator``, force), so
applying twice is a no-op and someone else's edit to a field we manage is taken back on the next
reconcile (which skips the PATCH of a child that is already as desired: :mod:`.applied`). The
ImageModel's status is applied the same way on its status subresource: a field the operator stops
applying is removed by the API server. Tests point this at the real API server.
"""

from __future__ import annotations

import contextlib
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx2
from lightkube import ALL_NS, ApiError, Client, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod, Service
from lightkube.types import CascadeType, PatchType

from kubediffusion.imagemodel.names import FIELD_MANAGER
from kubediffusion.imagemodel.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

Obj = dict[str, Any]
TIMEOUT = 30.0
# The autoscaler's own field manager on the status subresource: it owns status.autoscaling, the reconcile
# (kubediffusion-operator) owns the rest, so neither's apply removes the other's fields.
AUTOSCALER_MANAGER = "kubediffusion-autoscaler"

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
        """Objects of ``kind`` with these labels in ``namespace`` ("" = every namespace)."""
        with _answers():
            found = self.client.list(RESOURCES[kind], namespace=namespace or ALL_NS, labels=dict(selector))
            return [_plain(o) for o in found]

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

    def scale(self, namespace: str, name: str, replicas: int, *, resource_version: str) -> None:
        """Write spec.replicas through the ImageModel's scale subresource, as ``kubectl scale`` does.

        ``resource_version`` is the model as the caller decided on it: a 409 (someone, e.g. a router
        waking the model, wrote in between) is raised, and the caller decides again on fresh data.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        with _answers():
            self.client.patch(ImageModel.Scale, name, body, namespace=namespace, patch_type=PatchType.MERGE)

    def apply_autoscaling_status(self, namespace: str, name: str, autoscaling: Mapping[str, Any] | None) -> None:
        """Server-side apply status.autoscaling alone, as the autoscaler's field manager (None removes it)."""
        status = {"autoscaling": dict(autoscaling)} if autoscaling is not None else {}
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace}}
        try:
            with _answers():
                self.client.patch(
                    ImageModel.Status,
                    name,
                    {**body, "status": status},
                    namespace=namespace,
                    patch_type=PatchType.APPLY,
                    field_manager=AUTOSCALER_MANAGER,
                    force=True,
                )
        except KubeError as exc:
            if exc.status != 404:
                raise

    def post_event(self, about: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about an object (what ``kopf.event`` posts from handlers), for code outside them."""
        meta = about["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": about.get("apiVersion", API_VERSION),
                "kind": about.get("kind", KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with _answers():
            self.client.create(cast(Event, Event.from_dict(event)), namespace=meta["namespace"])


def new_client(connections: int = 20) -> Client:
    """In-cluster service account, else $KUBECONFIG / ~/.kube/config; ``connections`` kept open at most.

    A pool smaller than the number of threads that call the API server at once makes them queue for a
    connection or open and close extra ones (a TLS handshake each): the handlers pass their worker count
    (plus the autoscaler's). lightkube takes no pool limits, so the transport is built here, with
    lightkube's own TLS setup; a proxy the environment names for the API server is still used.
    """
    config = KubeConfig.from_env().get()
    if config is None or config.user is None:  # from_env raises first; typed as optional
        raise RuntimeError("no Kubernetes configuration: neither in a cluster nor $KUBECONFIG")
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    tls = verify_cluster(config.cluster, config.user, config.abs_file)
    proxy = _env_proxy(config.cluster.server)
    return Client(
        config,
        field_manager=FIELD_MANAGER,
        timeout=httpx2.Timeout(TIMEOUT),
        transport=httpx2.HTTPTransport(verify=tls, limits=limits),
        proxy=proxy,
    )


def _env_proxy(server: str) -> str | None:
    """The proxy $HTTPS_PROXY/$HTTP_PROXY name for ``server`` unless $NO_PROXY exempts it (as httpx read them)."""
    url = urllib.parse.urlsplit(server)
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    return urllib.request.getproxies().get(url.scheme)
