"""The reconcile's view of the API server, in memory, for unit tests (the cluster tier runs the real one)."""

from __future__ import annotations

import copy
from typing import Any

from kubediffusion.operator.kube import KubeError


class FakeKube:
    """The reconcile's view of the API server, in memory (the cluster tier runs it against the real one).

    ``apply_status`` stores what is applied as the whole status: with one field manager, that is what
    server-side apply leaves (fields it stops applying are removed).
    """

    def __init__(self, model: dict[str, Any], reject: dict[str, KubeError] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {("ImageModel", model["metadata"]["name"]): model}
        self.reject = reject or {}
        self.status_writes: list[dict[str, Any]] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] in self.reject:
            raise self.reject[obj["kind"]]
        key = (obj["kind"], obj["metadata"]["name"])
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = f"uid-{key[1]}"
        stored["status"] = (self.objects.get(key) or {}).get("status") or {}
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        def matches(obj: dict[str, Any]) -> bool:
            return selector.items() <= (obj["metadata"].get("labels") or {}).items()

        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind and matches(o)]

    def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        self.objects.pop((kind, name), None)

    def apply_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_writes.append(copy.deepcopy(status))
        self.objects[("ImageModel", name)]["status"] = copy.deepcopy(status)
