"""Model discovery: where the routing table comes from.

One interface, :class:`Discovery`, two implementations:

* :class:`StaticDiscovery` (here): a YAML file listing models and their endpoint URLs, for
  ``kubediffusion local`` and for routers outside a cluster.
* :class:`kubediffusion.router.kube_discovery.KubernetesDiscovery`: watches ImageModels and their
  inference Pods through the API server.

Both produce :class:`~kubediffusion.router.routing.RoutingTable` snapshots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset
from kubediffusion.router.adapters import AdapterSpec, adapter_scales
from kubediffusion.router.modelinfo import ModelInfo, from_repo
from kubediffusion.router.routing import CAPABILITIES, Capability, ModelEntry, RoutingTable

log = logging.getLogger(__name__)


Listener = Callable[[RoutingTable], None]


@runtime_checkable
class Discovery(Protocol):
    """Keeps a routing table current. ``start`` returns quickly; ``synced`` turns true after the first
    complete view (the router's /readyz waits for it). Listeners (``subscribe``) are called on the event
    loop with each new table, once it is in place (requests held for a model wait for them: holding.py)."""

    @property
    def synced(self) -> bool: ...

    def table(self) -> RoutingTable: ...

    def subscribe(self, listener: Listener) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ModelSpecFields(BaseModel):
    """The part of an ImageModel spec (or a static config entry) the router needs. Unknown keys are
    ignored: the operator owns the full spec."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    aliases: tuple[str, ...] = ()
    default: bool = False
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    limits: GenerationLimits = Field(default_factory=GenerationLimits)
    presets: dict[str, StylePreset] = Field(default_factory=dict)


class StaticAdapter(AdapterSpec):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StaticModel(ModelSpecFields):
    """A static config entry. ``repo`` is the Hugging Face repo id of the weights (requests may name
    the model by it; publisher, family and version are derived from it unless given, see modelinfo.py);
    ``supports`` narrows what the model is asked for (default: everything); ``adapters`` are its pods'
    LoRA adapters ({name, defaultScale}; absent: unknown, the pods alone check adapter names)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    endpoints: tuple[str, ...] = ()
    repo: str | None = Field(default=None, min_length=1, max_length=200)
    publisher: str | None = Field(default=None, min_length=1, max_length=200)
    family: str | None = Field(default=None, min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=200)
    supports: tuple[Capability, ...] = CAPABILITIES
    adapters: tuple[StaticAdapter, ...] | None = None


def notify(listeners: Iterable[Listener], table: RoutingTable) -> None:
    """Tell every listener; one that fails is logged and does not keep the others (or discovery) from going on."""
    for listener in listeners:
        try:
            listener(table)
        except Exception:
            log.exception("a routing table listener failed")


def parse_static_config(data: Any) -> RoutingTable:
    """A list of models (or ``{"models": [...]}``) -> routing table; ValueError says what is wrong."""
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("static config must be a list of models (or a mapping with a 'models' list)")
    created = int(time.time())
    entries = []
    for index, item in enumerate(items):
        try:
            model = StaticModel.model_validate(item)
        except ValidationError as exc:
            raise ValueError(f"static config model #{index}: {exc}") from None
        entries.append(
            ModelEntry(
                name=model.name,
                endpoints=tuple(url.rstrip("/") for url in model.endpoints),
                aliases=model.aliases,
                default=model.default,
                defaults=model.defaults,
                limits=model.limits,
                presets=dict(model.presets),
                created=created,
                repo=model.repo,
                info=ModelInfo(publisher=model.publisher, family=model.family, version=model.version).over(
                    from_repo(model.repo)
                ),
                supports=frozenset(model.supports),
                adapters=adapter_scales(model.adapters) if model.adapters is not None else None,
            )
        )
    return RoutingTable(entries)


class StaticDiscovery:
    """Models from a YAML file (or a table given directly, for tests). Synced once loaded."""

    def __init__(self, path: Path | None = None, *, table: RoutingTable | None = None) -> None:
        if (path is None) == (table is None):
            raise ValueError("give exactly one of path or table")
        self._path = path
        self._table = table if table is not None else RoutingTable()
        self._synced = table is not None
        self._listeners: list[Listener] = []

    @property
    def synced(self) -> bool:
        return self._synced

    def table(self) -> RoutingTable:
        return self._table

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set_table(self, table: RoutingTable) -> None:
        self._table = table
        notify(self._listeners, table)

    async def start(self) -> None:
        if self._path is not None:
            self._table = parse_static_config(yaml.safe_load(self._path.read_text()))
            log.info("static discovery: %d model(s) from %s", len(self._table), self._path)
        self._synced = True

    async def stop(self) -> None:
        return None
