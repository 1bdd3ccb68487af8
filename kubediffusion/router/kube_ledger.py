"""The shared usage document as a ConfigMap (``KD_ROUTER_USAGE_CONFIGMAP``), for :class:`~.ledger.SharedLedger`.

A GET gives the data and ``metadata.resourceVersion``; a PUT (replace) carrying that resourceVersion is
the compare-and-swap: the API server answers 409 when another replica wrote in between, and the ledger
reads again. The data is the ledger's own (one key per UTC day, see :mod:`.usagebook`); nothing else in
the ConfigMap is touched (labels and annotations are kept as read).

The ConfigMap should exist (the chart creates it, without ``data``, so a ``helm upgrade`` never resets
the counts); a router that finds none creates it, which needs ``create`` on configmaps. RBAC otherwise:
``get`` and ``update`` on that one ConfigMap (``resourceNames``). Every failure (unreachable, forbidden,
too large) is a :class:`~.ledger.StoreError` with the API server's status, never the data.
"""

from __future__ import annotations

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from kubediffusion.router.ledger import StoreError

FIELD_MANAGER = "kubediffusion-router"
LABELS = {"app.kubernetes.io/component": "router", "app.kubernetes.io/part-of": "kubediffusion"}


class ConfigMapDocument:
    def __init__(self, client: AsyncClient, name: str, namespace: str, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self.name = name
        self.namespace = namespace
        self._last: ConfigMap | None = None  # as last read: its metadata goes back with the next write

    async def read(self) -> tuple[dict[str, str], str]:
        try:
            found = await self._client.get(ConfigMap, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise StoreError(self._describe(exc)) from exc
            return {}, ""  # none yet: written with create
        except Exception as exc:
            raise StoreError(f"ConfigMap {self.namespace}/{self.name}: {type(exc).__name__}: {exc}") from exc
        self._last = found
        version = (found.metadata.resourceVersion if found.metadata is not None else None) or ""
        return dict(found.data or {}), version

    async def write(self, data: dict[str, str], version: str) -> str | None:
        try:
            if not version:
                meta = ObjectMeta(name=self.name, namespace=self.namespace, labels=dict(LABELS))
                written = await self._client.create(ConfigMap(metadata=meta, data=data), field_manager=FIELD_MANAGER)
            else:
                previous = self._last.metadata if self._last is not None else None
                meta = ObjectMeta(
                    name=self.name,
                    namespace=self.namespace,
                    resourceVersion=version,
                    labels=previous.labels if previous is not None else None,
                    annotations=previous.annotations if previous is not None else None,
                )
                written = await self._client.replace(ConfigMap(metadata=meta, data=data), field_manager=FIELD_MANAGER)
        except ApiError as exc:
            if exc.status.code == 409:  # written in between (or created by another replica): read again
                return None
            raise StoreError(self._describe(exc)) from exc
        except Exception as exc:
            raise StoreError(f"ConfigMap {self.namespace}/{self.name}: {type(exc).__name__}: {exc}") from exc
        self._last = written
        return (written.metadata.resourceVersion if written.metadata is not None else None) or ""

    async def close(self) -> None:
        if self._owns_client:
            await self._client.close()

    def _describe(self, exc: ApiError) -> str:
        return f"ConfigMap {self.namespace}/{self.name}: {exc.status.code} {exc.status.reason}: {exc.status.message}"
