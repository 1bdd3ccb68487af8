"""Discovery from the Kubernetes API server: ImageModels and their inference Pods.

Two watch loops run in daemon threads (the official client is synchronous; no extra dependency):

* ImageModels (``kubediffusion.io/v1alpha1``): spec aliases/default/defaults/limits/presets and
  status.readyReplicas;
* Pods labelled ``app.kubernetes.io/component=inference`` and ``kubediffusion.io/model=<model>``
  (the labels of :mod:`kubediffusion.imagemodel.names`): a pod is an endpoint
  ``http://<status.podIP>:<container port named http>`` while it is Ready, has an IP and is not
  terminating.

Pods rather than the EndpointSlices of the ``im-<model>`` Services: one hop less of lag (no
EndpointSlice controller in between), no Service needed, and it works where pod IPs are loopback
addresses (the API server refuses those in EndpointSlices; our local test control plane uses them).

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

from kubediffusion.imagemodel.names import COMPONENT_LABEL, MODEL_LABEL, PORT, PORT_NAME
from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

log = logging.getLogger(__name__)

# Server-side: inference pods of any model (cache Job pods carry the model label with component cache).
POD_SELECTOR = f"{COMPONENT_LABEL}=inference,{MODEL_LABEL}"
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


def pod_endpoint(obj: dict[str, Any]) -> tuple[str, str | None]:
    """A Pod -> (its model label, its base URL, or None while it must get no requests).

    None unless the pod is Ready, has an IP and is not terminating (a deleted pod keeps Ready=True
    until its kubelet stops it: no new work for it). The port is the container port named ``http``
    in any container, else the only port declared, else the inference server's default.
    """
    meta = obj.get("metadata") or {}
    model = (meta.get("labels") or {}).get(MODEL_LABEL, "")
    status = obj.get("status") or {}
    ip = status.get("podIP")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if not ip or not ready or meta.get("deletionTimestamp"):
        return model, None
    host = f"[{ip}]" if ":" in ip else ip
    return model, f"http://{host}:{_http_port(obj.get('spec') or {})}"


def _http_port(spec: dict[str, Any]) -> int:
    ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or []]
    port = next((p.get("containerPort") for p in ports if p.get("name") == PORT_NAME), None)
    if port is None and len(ports) == 1:
        port = ports[0].get("containerPort")
    return port if isinstance(port, int) else PORT


def build_table(models: dict[Key, dict[str, Any]], pods: dict[Key, tuple[str, str | None]]) -> RoutingTable:
    by_model: dict[Key, list[str]] = {}
    for (namespace, _), (model, url) in pods.items():
        if url is not None:
            by_model.setdefault((namespace, model), []).append(url)
    entries = []
    for (namespace, name), obj in models.items():
        urls = tuple(sorted(set(by_model.get((namespace, name), ()))))
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
        self._pods: dict[Key, tuple[str, str | None]] = {}
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
        return self._listed >= {"models", "pods"}

    def table(self) -> RoutingTable:
        return self._table

    async def start(self) -> None:
        self._stop.clear()
        for kind in ("models", "pods"):
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
        core = client.CoreV1Api(self._api_client)
        if self._namespace:
            return core.list_namespaced_pod, dict(namespace=self._namespace, label_selector=POD_SELECTOR)
        return core.list_pod_for_all_namespaces, dict(label_selector=POD_SELECTOR)

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
                self._pods = {_key(item): pod_endpoint(item) for item in items}
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
                self._pods.pop(key, None)
            else:
                self._pods[key] = pod_endpoint(obj)
            self._rebuild()

    def _rebuild(self) -> None:
        table = build_table(self._models, self._pods)
        if table != self._table:
            self._table = table
            log.info("routing table: %s", ", ".join(f"{m.name}({len(m.endpoints)})" for m in table.models) or "empty")
            if self._on_change is not None:
                self._on_change(table)
