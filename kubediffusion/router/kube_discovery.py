"""Discovery from the Kubernetes API server: ImageModels and their inference Pods.

Two watch loops run as asyncio tasks on one lightkube ``AsyncClient``; ``stop`` cancels them:

* ImageModels (``kubediffusion.io/v1alpha1``): spec aliases/default/defaults/limits/presets, the
  Hugging Face repo of spec.source (a name requests may use; publisher, family and version are
  derived from it unless spec.info sets them), the replicas the spec asks for and whether it scales
  to zero (scale from zero: holding.py), status.readyReplicas and status.phase, and the names and
  default scales of spec.adapters (requests may name ``<model>:<adapter>``: adapters.py);
* Pods labelled ``app.kubernetes.io/component=inference`` and ``kubediffusion.io/model=<model>``
  (the labels of :mod:`kubediffusion.imagemodel.names`): a pod is an endpoint
  ``http://<status.podIP>:<container port named http>`` while it is Ready, has an IP and is not
  terminating.

Pods rather than the EndpointSlices of the ``im-<model>`` Services: one hop less of lag (no
EndpointSlice controller in between), no Service needed, and it works where pod IPs are loopback
addresses (the API server refuses those in EndpointSlices; our local test control plane uses them).

Each loop lists (a full snapshot, replacing what it knew), then watches from the list's
resourceVersion with a server-side timeout, and re-watches from the last version it saw (a watch
that outlives its timeout by ``WATCH_GRACE_SECONDS`` is cut and re-watched too: its connection may
have died without a word). A 410 Gone or any other error drops back to a fresh list (after a
short backoff for errors). After every change the routing table is rebuilt from both snapshots and
swapped in whole, and every listener (:meth:`KubernetesDiscovery.subscribe`) is told. ``synced`` is
true once both have listed. Objects reach the pure functions below
as plain dicts, as the API server sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.core.client import LabelSelector
from lightkube.core.selector import build_selector
from lightkube.generic_resource import create_namespaced_resource
from lightkube.operators import exists
from lightkube.resources.core_v1 import Pod
from pydantic import ValidationError

from kubediffusion.imagemodel.names import COMPONENT_LABEL, MODEL_LABEL, PORT, PORT_NAME
from kubediffusion.imagemodel.resource import GROUP, KIND, PLURAL, VERSION
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError
from kubediffusion.router.adapters import spec_adapters
from kubediffusion.router.discovery import notify
from kubediffusion.router.modelinfo import ModelInfo, from_repo, tiny_info
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

log = logging.getLogger(__name__)

ImageModel = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

# Server-side: inference pods of any model (cache Job pods carry the model label with component cache).
POD_LABELS: LabelSelector = {COMPONENT_LABEL: "inference", MODEL_LABEL: exists()}
POD_SELECTOR = build_selector(POD_LABELS)
ERROR_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
WATCH_GRACE_SECONDS = 15.0  # past its server-side timeout, a watch that has not ended is presumed dead

Key = tuple[str, str]  # (namespace, name)
Kind = Literal["models", "pods"]


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
    ready, phase = status.get("readyReplicas"), status.get("phase")
    repo = spec.source.huggingface.repo if spec.source.huggingface is not None else None
    derived = tiny_info(spec.source.tiny.kind) if spec.source.tiny is not None else from_repo(repo)
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
        desired_replicas=spec.desired_replicas,
        scales_to_zero=spec.autoscaling is not None and spec.autoscaling.min_replicas == 0,
        phase=phase if isinstance(phase, str) else None,
        repo=repo,
        info=explicit_info(obj, namespace, name).over(derived),
        adapters=spec_adapters(obj, namespace, name),
    )


def explicit_info(obj: dict[str, Any], namespace: str, name: str) -> ModelInfo:
    """``spec.info`` ({publisher, family, version}), read from the object as sent: a field the CRD
    owns (until it declares it, the API server prunes it and this is empty)."""
    raw = (obj.get("spec") or {}).get("info")
    if raw is None:
        return ModelInfo()
    try:
        return ModelInfo.model_validate(raw)
    except ValidationError as exc:
        log.warning("ImageModel %s/%s: spec.info ignored: %s", namespace, name, exc.errors()[0]["msg"])
        return ModelInfo()


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


def is_gone(exc: Exception) -> bool:
    """410 Gone: the watch's resourceVersion is too old. The API server says so in an ERROR event of the
    stream (lightkube raises ApiError) or, more rarely, as the watch request's own HTTP status."""
    if isinstance(exc, ApiError):
        return exc.status.code == 410
    response = getattr(exc, "response", None)  # an HTTPStatusError of lightkube's HTTP client
    return getattr(response, "status_code", None) == 410


class KubernetesDiscovery:
    """Follows ImageModels and inference Pods through ``client``. ``owns_client``: close it on stop.
    ``sleep`` waits out the error backoff (tests record it instead)."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str = "",
        watch_timeout_seconds: int = 30,
        on_change: Callable[[RoutingTable], None] | None = None,
        owns_client: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._namespace = namespace or ALL_NS
        self._watch_timeout = watch_timeout_seconds
        self._listeners: list[Callable[[RoutingTable], None]] = [on_change] if on_change is not None else []
        self._owns_client = owns_client
        self._sleep = sleep
        self._models: dict[Key, dict[str, Any]] = {}
        self._pods: dict[Key, tuple[str, str | None]] = {}
        self._listed: set[Kind] = set()
        self._table = RoutingTable()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> KubernetesDiscovery:
        """The client from ``settings.kubeconfig``, else the in-cluster service account, else $KUBECONFIG
        (or ~/.kube/config); lightkube.ConfigError when there is none."""
        config = KubeConfig.from_file(settings.kubeconfig) if settings.kubeconfig else KubeConfig.from_env()
        return cls(
            AsyncClient(config=config),
            namespace=settings.namespace,
            watch_timeout_seconds=settings.watch_timeout_seconds,
            owns_client=True,
        )

    @property
    def synced(self) -> bool:
        return self._listed >= {"models", "pods"}

    @property
    def client(self) -> AsyncClient:
        """The API client it watches with; the router's one write (waking a model, kube_scaler.py) shares it."""
        return self._client

    def subscribe(self, listener: Callable[[RoutingTable], None]) -> None:
        self._listeners.append(listener)

    def table(self) -> RoutingTable:
        return self._table

    async def start(self) -> None:
        kinds: tuple[Kind, ...] = ("models", "pods")
        self._tasks = [asyncio.create_task(self._follow(kind), name=f"discovery-{kind}") for kind in kinds]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()  # a blocked watch read is interrupted at once; lightkube closes its response
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.close()

    # -- watch loops (tasks) ---------------------------------------------------------------------

    async def _follow(self, kind: Kind) -> None:
        failures = 0
        while True:
            try:
                version = await self._relist(kind)
                failures = 0
                await self._watch(kind, version)
            except Exception as exc:  # the loop must survive anything the network throws at it
                if is_gone(exc):
                    log.info("discovery %s: watch expired (410), relisting", kind)
                    continue
                failures += 1
                log.warning("discovery %s: %s: %s; relisting", kind, type(exc).__name__, exc)
            if failures:
                await self._sleep(ERROR_BACKOFF_SECONDS[min(failures, len(ERROR_BACKOFF_SECONDS)) - 1])

    async def _relist(self, kind: Kind) -> str:
        if kind == "models":
            models = self._client.list(ImageModel, namespace=self._namespace)
            self._models = {_key(item): item async for item in _as_dicts(models)}
            version = models.resourceVersion
        else:
            pods = self._client.list(Pod, namespace=self._namespace, labels=POD_LABELS)
            self._pods = {_key(item): pod_endpoint(item) async for item in _as_dicts(pods)}
            version = pods.resourceVersion
        self._listed.add(kind)
        self._rebuild()
        return version

    async def _watch(self, kind: Kind, version: str) -> None:
        """Apply events from ``version`` on, until an error. lightkube re-watches by itself after each
        server-side timeout, but would wait forever on a connection that died without a word; so each
        round is cut a grace period after the server should have ended it, and re-watched from the
        last version seen."""
        while True:
            round_ = asyncio.timeout(self._watch_timeout + WATCH_GRACE_SECONDS)
            try:
                async with round_:
                    async for event_type, obj in self._events(kind, version):
                        item: dict[str, Any] = obj.to_dict()
                        version = (item.get("metadata") or {}).get("resourceVersion") or version
                        if event_type in ("ADDED", "MODIFIED", "DELETED"):
                            self._apply(kind, event_type, item)
            except TimeoutError:
                if not round_.expired():
                    raise

    def _events(self, kind: Kind, version: str) -> AsyncIterable[tuple[str, Any]]:
        if kind == "models":
            return self._client.watch(
                ImageModel, namespace=self._namespace, server_timeout=self._watch_timeout, resource_version=version
            )
        return self._client.watch(
            Pod,
            namespace=self._namespace,
            labels=POD_LABELS,
            server_timeout=self._watch_timeout,
            resource_version=version,
        )

    def _apply(self, kind: Kind, event_type: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
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
            notify(self._listeners, table)


async def _as_dicts(objects: AsyncIterable[Any]) -> AsyncIterator[dict[str, Any]]:
    async for obj in objects:
        item: dict[str, Any] = obj.to_dict()
        yield item
