"""Discovery from the Kubernetes API server: ImageModels and the EndpointSlices of their Services.

Two watch loops run in daemon threads (the official client is synchronous; no extra dependency):

* ImageModels (``kubediffusion.io/v1alpha1``): spec aliases/default/defaults/limits/presets and
  status.readyReplicas;
* EndpointSlices labelled ``kubernetes.io/service-name``, keeping those of ``im-<model>`` Services:
  ready endpoints' addresses with the port named ``http``.

Each loop lists (a full snapshot, replacing what it knew), then watches from the list's
resourceVersion with a server-side timeout, and re-watches. A 410 Gone or any other error drops
back to a fresh list (after a short backoff for errors). After every change the routing table is
rebuilt from both snapshots and swapped in whole. ``synced`` is true once both have listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from kubediffusion.operator.spec import ImageModelSpec, InvalidSpecError
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubediffusion.io", "v1alpha1", "imagemodels"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_PREFIX = "im-"
PORT_NAME = "http"
ERROR_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)

Key = tuple[str, str]  # (namespace, name)


def model_entry(obj: dict[str, Any], endpoints: tuple[str, ...]) -> ModelEntry | None:
    """An ImageModel object -> routing entry; None (logged) when its spec cannot be used.

    The spec is parsed by the operator's own :class:`ImageModelSpec`, so the router validates
    against exactly the defaults and limits the pods are started with (the tiny source has its own).
    """
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    try:
        spec = ImageModelSpec.from_body(obj)
    except InvalidSpecError as exc:
        log.warning("ImageModel %s/%s: unusable spec, not routed: %s", namespace, name, exc)
        return None
    status = obj.get("status") or {}
    ready = status.get("readyReplicas")
    return ModelEntry(
        name=name,
        namespace=namespace,
        endpoints=endpoints,
        aliases=tuple(spec.aliases),
        default=spec.default,
        defaults=spec.effective_defaults,
        limits=spec.effective_limits,
        presets=dict(spec.presets),
        created=_timestamp(meta.get("creationTimestamp")),
        ready_replicas=ready if isinstance(ready, int) else 0,
    )


def slice_endpoints(obj: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """An EndpointSlice -> (service name, base URLs of its ready endpoints on the ``http`` port)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL, "")
    ports = obj.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == PORT_NAME), None)
    if port is None and len(ports) == 1:
        port = ports[0].get("port")
    if port is None:
        return service, ()
    ipv6 = obj.get("addressType") == "IPv6"
    urls = []
    for endpoint in obj.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue  # an absent "ready" means ready (API docs); terminating pods get no new work
        for address in endpoint.get("addresses") or []:
            urls.append(f"http://[{address}]:{port}" if ipv6 else f"http://{address}:{port}")
    return service, tuple(urls)


def build_table(models: dict[Key, dict[str, Any]], slices: dict[Key, tuple[str, tuple[str, ...]]]) -> RoutingTable:
    by_service: dict[Key, list[str]] = {}
    for (namespace, _), (service, urls) in slices.items():
        by_service.setdefault((namespace, service), []).extend(urls)
    entries = []
    for (namespace, name), obj in models.items():
        urls = tuple(sorted(set(by_service.get((namespace, SERVICE_PREFIX + name), ()))))
        entry = model_entry(obj, urls)
        if entry is not None:
            entries.append(entry)
    return RoutingTable(entries)


def _timestamp(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class KubernetesDiscovery:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str = "",
        watch_timeout_seconds: int = 30,
        on_change: Callable[[RoutingTable], None] | None = None,
    ) -> None:
        self._api_client = api_client
        self._namespace = namespace
        self._watch_timeout = watch_timeout_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._models: dict[Key, dict[str, Any]] = {}
        self._slices: dict[Key, tuple[str, tuple[str, ...]]] = {}
        self._listed: set[str] = set()
        self._table = RoutingTable()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[watch.Watch] = []

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> KubernetesDiscovery:
        configuration = client.Configuration()
        if settings.kubeconfig is not None:
            config.load_kube_config(config_file=str(settings.kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(
            client.ApiClient(configuration),
            namespace=settings.namespace,
            watch_timeout_seconds=settings.watch_timeout_seconds,
        )

    @property
    def synced(self) -> bool:
        return self._listed >= {"models", "slices"}

    def table(self) -> RoutingTable:
        return self._table

    async def start(self) -> None:
        self._stop.clear()
        for kind in ("models", "slices"):
            thread = threading.Thread(target=self._run, args=(kind,), name=f"discovery-{kind}", daemon=True)
            self._threads.append(thread)
            thread.start()

    async def stop(self) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.stop()  # type: ignore[no-untyped-call]
            response = getattr(w, "_resp", None)  # interrupt a blocked read; the loop sees _stop
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5.0)
        self._threads.clear()

    # -- watch loops (threads) -------------------------------------------------------------------

    def _list_call(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        if kind == "models":
            custom = client.CustomObjectsApi(self._api_client)
            if self._namespace:
                return custom.list_namespaced_custom_object, dict(
                    group=GROUP, version=VERSION, namespace=self._namespace, plural=PLURAL
                )
            return custom.list_cluster_custom_object, dict(group=GROUP, version=VERSION, plural=PLURAL)
        discovery = client.DiscoveryV1Api(self._api_client)
        if self._namespace:
            return discovery.list_namespaced_endpoint_slice, dict(
                namespace=self._namespace, label_selector=SERVICE_NAME_LABEL
            )
        return discovery.list_endpoint_slice_for_all_namespaces, dict(label_selector=SERVICE_NAME_LABEL)

    def _run(self, kind: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._relist(kind)
                failures = 0
                self._watch(kind, version)
            except ApiException as exc:
                if self._stop.is_set():
                    return
                if exc.status == 410:
                    log.info("discovery %s: watch expired (410), relisting", kind)
                    continue
                failures += 1
                log.warning("discovery %s: API error %s %s; relisting", kind, exc.status, exc.reason)
            except Exception as exc:  # the loop must survive anything the network throws at it
                if self._stop.is_set():
                    return
                failures += 1
                log.warning("discovery %s: %s: %s; relisting", kind, type(exc).__name__, exc)
            if failures:
                self._stop.wait(ERROR_BACKOFF_SECONDS[min(failures, len(ERROR_BACKOFF_SECONDS)) - 1])

    def _relist(self, kind: str) -> str:
        call, kwargs = self._list_call(kind)
        response = call(_preload_content=False, _request_timeout=(10, 60), **kwargs)
        body = json.loads(response.data)
        items = body.get("items") or []
        with self._lock:
            if kind == "models":
                self._models = {_key(item): item for item in items}
            else:
                self._slices = {_key(item): slice_endpoints(item) for item in items}
            self._listed.add(kind)
            self._rebuild()
        version: str = (body.get("metadata") or {}).get("resourceVersion", "")
        return version

    def _watch(self, kind: str, version: str) -> None:
        call, kwargs = self._list_call(kind)
        w = watch.Watch()  # type: ignore[no-untyped-call]
        self._watches.append(w)
        try:
            while not self._stop.is_set():
                for event in w.stream(
                    call,
                    resource_version=version,
                    timeout_seconds=self._watch_timeout,  # type: ignore[no-untyped-call]
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    _request_timeout=(10, self._watch_timeout + 15),
                    **kwargs,
                ):
                    if self._stop.is_set():
                        return
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(kind, event["type"], obj)
        finally:
            self._watches.remove(w)

    def _apply(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        with self._lock:
            if kind == "models":
                if event_type == "DELETED":
                    self._models.pop(key, None)
                else:
                    self._models[key] = obj
            elif event_type == "DELETED":
                self._slices.pop(key, None)
            else:
                self._slices[key] = slice_endpoints(obj)
            self._rebuild()

    def _rebuild(self) -> None:
        table = build_table(self._models, self._slices)
        if table != self._table:
            self._table = table
            log.info("routing table: %s", ", ".join(f"{m.name}({len(m.endpoints)})" for m in table.models) or "empty")
            if self._on_change is not None:
                self._on_change(table)
