"""All Kubernetes API access of the operator, in one small module, with plain dicts in and out.

Writes are server-side apply (``application/apply-patch+yaml``, field manager
``kubediffusion-operator``, force) of whole objects, so applying twice is a no-op and someone else's
edit to a field we manage is taken back on the next reconcile. Tests point this at the real API server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes import client

from kubediffusion.imagemodel.names import FIELD_MANAGER
from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TIMEOUT = 30.0

# kind -> collection path (namespaced); the only kinds the operator touches.
_PATHS = {
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ImageModel": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


@dataclass
class KubeError(Exception):
    """A non-2xx answer from the API server; ``status`` is the HTTP code, ``message`` its reason."""

    status: int
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> Obj:
        headers = {"Accept": "application/json"}
        payload: object = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = body  # the REST layer serializes JSON (and apply-patch+yaml) bodies
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=payload,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=TIMEOUT)
        raw: bytes = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            try:
                message = json.loads(raw).get("message", "")
            except ValueError:
                message = raw.decode(errors="replace")[:500]
            raise KubeError(response.status, message)
        return json.loads(raw) if raw else {}

    @staticmethod
    def _item(kind: str, namespace: str, name: str = "") -> str:
        base = _PATHS[kind].format(ns=quote(namespace))
        return f"{base}/{quote(name)}" if name else base

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Server-side apply the whole object; returns it as stored (with status)."""
        meta = obj["metadata"]
        return self._request(
            "PATCH",
            self._item(obj["kind"], meta["namespace"], meta["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._request("GET", self._item(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, selector: Mapping[str, str]) -> list[Obj]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        answer = self._request("GET", self._item(kind, namespace), query=[("labelSelector", label_selector)])
        items: list[Obj] = answer.get("items") or []
        return items

    def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        """Delete; the garbage collector removes dependents (``Foreground``: before the object goes). Absent is fine."""
        try:
            self._request(
                "DELETE",
                self._item(kind, namespace, name),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    def secret_key_exists(self, namespace: str, name: str, key: str) -> bool | None:
        """True/False whether the Secret has ``key``; None when the Secret is absent. Values are not kept."""
        secret = self.get("Secret", namespace, name)
        if secret is None:
            return None
        return key in (secret.get("data") or {}) or key in (secret.get("stringData") or {})

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the ImageModel's status subresource (None values remove fields)."""
        try:
            self._request(
                "PATCH",
                self._item("ImageModel", namespace, name) + "/status",
                body={"status": status},
                content_type="application/merge-patch+json",
            )
        except KubeError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise


def new_api_client() -> client.ApiClient:
    """In-cluster service account, else $KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()
