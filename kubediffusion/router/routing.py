"""The routing table: which model a request's ``model`` names, and where that model is served.

Built by a discovery implementation as an immutable snapshot; the app swaps whole tables, so a
request never sees a half-applied update.

A request names a model by its name, one of its aliases, or the Hugging Face repo id its weights come
from (``stabilityai/sdxl-turbo``, matched without regard to case, as the Hub does); names win over
aliases, aliases over repo ids.

``<model>:<adapter>`` names one of a model's LoRA adapters (the model by any of those names, then a
colon): the request goes to that model's pods as ``<its name>:<adapter>``, a name they answer to
(:meth:`RoutingTable.target`). A model's adapters are known from its ImageModel's ``spec.adapters`` or a
static entry's ``adapters``; a static entry without that list leaves them unknown, and then any
well-formed adapter name goes on to the pods, which know.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubediffusion.api.errors import ModelNotFoundError, NotFoundError
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset
from kubediffusion.api.pipelines import ADAPTER_NAME_PATTERN, PipelineOptions
from kubediffusion.api.schema import GenerationParams, ImageGenerationRequest, resolve_params
from kubediffusion.router.modelinfo import ModelInfo

log = logging.getLogger(__name__)

# What a model may be asked for. Every model the inference server loads answers all four (edits and
# variations reuse its loaded weights); a static config may narrow it for a model that cannot.
Capability = Literal["generations", "edits", "variations", "streaming"]
CAPABILITIES: tuple[Capability, ...] = ("generations", "edits", "variations", "streaming")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    endpoints: tuple[str, ...] = ()  # base URLs of ready pods, e.g. "http://10.0.0.7:8000"
    aliases: tuple[str, ...] = ()
    default: bool = False
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    limits: GenerationLimits = field(default_factory=GenerationLimits)
    presets: Mapping[str, StylePreset] = field(default_factory=dict)
    namespace: str = ""
    created: int = 0
    ready_replicas: int | None = None  # from the ImageModel's status; None = unknown (static)
    desired_replicas: int | None = None  # spec.replicas (else autoscaling.minReplicas); None = unknown (static)
    scales_to_zero: bool = False  # spec.autoscaling.minReplicas 0: requests wait for a pod (holding.py)
    phase: str | None = None  # the ImageModel's status.phase
    repo: str | None = None  # the Hugging Face repo id of its weights, when they come from the Hub
    info: ModelInfo = field(default_factory=ModelInfo)  # publisher, family, version (see modelinfo.py)
    supports: frozenset[Capability] = frozenset(CAPABILITIES)
    adapters: Mapping[str, float] | None = None  # LoRA adapter -> its default scale; None = unknown (static)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def at_zero(self) -> bool:
        """Known to be scaled to zero (its spec asks for no pod); a static model never is."""
        return self.desired_replicas == 0

    @property
    def holds_requests(self) -> bool:
        """Whether a request waits for a pod to become ready instead of getting a 503 (see holding.py): the
        model scales to zero, has no ready pod, and has not failed (a refused spec never gets one)."""
        return self.scales_to_zero and not self.endpoints and self.phase != "Failed"

    def describe(self) -> dict[str, Any]:
        """The OpenAI model object plus our metadata, for ``GET /v1/models``."""
        ready = self.ready_replicas if self.ready_replicas is not None else len(self.endpoints)
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": self.namespace or "kubediffusion",
            "publisher": self.info.publisher,
            "family": self.info.family,
            "version": self.info.version,
            "repo": self.repo,
            "aliases": list(self.aliases),
            "default": self.default,
            "defaults": self.defaults.model_dump(by_alias=True),
            "limits": self.limits.model_dump(by_alias=True),
            "presets": {name: p.model_dump(by_alias=True, exclude_none=True) for name, p in self.presets.items()},
            "supports": {capability: capability in self.supports for capability in CAPABILITIES},
            "readyReplicas": ready,
            "endpoints": len(self.endpoints),
            "adapters": list(self.adapters or ()),
        }

    def describe_adapter(self, adapter: str) -> dict[str, Any]:
        """The model object of ``<model>:<adapter>``, in the pod's shape (vLLM's for LoRA modules); a
        default scale of null when the router does not know the model's adapters."""
        ready = self.ready_replicas if self.ready_replicas is not None else len(self.endpoints)
        return {
            "id": f"{self.name}:{adapter}",
            "object": "model",
            "created": self.created,
            "owned_by": self.namespace or "kubediffusion",
            "parent": self.name,
            "adapter": {"name": adapter, "defaultScale": (self.adapters or {}).get(adapter)},
            "readyReplicas": ready,
        }

    def listing(self) -> list[dict[str, Any]]:
        """Its entries of ``GET /v1/models``: the model, then each of its known adapters."""
        return [self.describe(), *(self.describe_adapter(name) for name in self.adapters or ())]


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a model and, for ``<model>:<adapter>``, one of its adapters."""

    entry: ModelEntry
    adapter: str | None = None

    @property
    def served_name(self) -> str:
        """The name the model's pods answer to: the model's own, with the adapter after a colon."""
        return self.entry.name if self.adapter is None else f"{self.entry.name}:{self.adapter}"

    def describe(self) -> dict[str, Any]:
        return self.entry.describe() if self.adapter is None else self.entry.describe_adapter(self.adapter)


def validate_against_model(request: ImageGenerationRequest, model: ModelEntry) -> GenerationParams:
    """Raise the 400 a pod of ``model`` would answer (its limits, sizes, presets), so bad input never
    reaches a pod. The resolved parameters only say what the request costs (usage.py): the pod resolves
    them again from the same spec, and the router forwards the client's body, not its own reading of it."""
    return resolve_params(request, model.defaults, model.limits, dict(model.presets))


class RoutingTable:
    """Names and aliases -> models. Ambiguities are resolved deterministically and logged once (``quiet``:
    not at all, for the views of :meth:`only`, whose ambiguities the whole table has logged already)."""

    def __init__(self, models: Iterable[ModelEntry] = (), *, quiet: bool = False) -> None:
        warn = (lambda *_args: None) if quiet else log.warning
        # Sort so that equal inputs give equal tables whatever order the API server listed them in.
        self.models: tuple[ModelEntry, ...] = tuple(sorted(models, key=lambda m: (m.name, m.namespace)))
        self._by_name: dict[str, ModelEntry] = {}
        for model in self.models:  # canonical names win over aliases
            if model.name in self._by_name:
                warn(
                    "model name %r exists in several namespaces; using %r",
                    model.name,
                    self._by_name[model.name].namespace,
                )
                continue
            self._by_name[model.name] = model
        for model in self.models:
            for alias in model.aliases:
                owner = self._by_name.setdefault(alias, model)
                if owner is not model:
                    warn("alias %r of model %r is already taken by %r; ignored", alias, model.name, owner.name)
        self._by_key = {model.key: model for model in self.models}
        self._by_repo: dict[str, ModelEntry] = {}
        for model in self.models:  # several models may serve one repo (revisions, dtypes): the first wins
            if model.repo:
                self._by_repo.setdefault(model.repo.lower(), model)
        defaults = [m for m in self.models if m.default]
        if len(defaults) > 1:
            warn(
                "several models are marked default (%s); using %r",
                ", ".join(m.name for m in defaults),
                defaults[0].name,
            )
        self.default: ModelEntry | None = (
            defaults[0] if defaults else (self.models[0] if len(self.models) == 1 else None)
        )

    def resolve(self, model: str | None) -> ModelEntry:
        """The model a request names (or the default one); ModelNotFoundError otherwise."""
        if model is None:
            if self.default is None:
                raise NotFoundError(
                    "No model was named and no default model is configured; set 'model'.",
                    param="model",
                    code="model_not_found",
                )
            return self.default
        entry = self._lookup(model)
        if entry is None:
            raise ModelNotFoundError(model)
        return entry

    def target(self, model: str | None) -> Target:
        """The model a request names, or ``<model>:<adapter>``: the model and one of its adapters (404
        ``model_not_found`` for a name the model's adapters lack: the pod's own check, reused)."""
        if model is None:
            return Target(self.resolve(None))
        entry = self._lookup(model)
        if entry is not None:
            return Target(entry)
        base, colon, adapter = model.rpartition(":")
        entry = self._lookup(base) if colon else None
        if entry is None:
            raise ModelNotFoundError(model)
        if entry.adapters is not None:
            PipelineOptions(adapters=entry.adapters).model_adapter(model, {base})
        elif not re.fullmatch(ADAPTER_NAME_PATTERN, adapter):
            raise ModelNotFoundError(model)
        return Target(entry, adapter)

    def _lookup(self, model: str) -> ModelEntry | None:
        return self._by_name.get(model) or self._by_repo.get(model.lower())

    def only(self, allowed: Callable[[ModelEntry], bool]) -> RoutingTable:
        """The table as if only the ``allowed`` models existed (a tenant's view: names, aliases, repo ids
        and the default model all resolve as they would in a cluster holding just those models)."""
        return RoutingTable([model for model in self.models if allowed(model)], quiet=True)

    def named(self, name: str) -> ModelEntry | None:
        """The model whose canonical name is ``name`` (not an alias), if any."""
        entry = self._by_name.get(name)
        return entry if entry is not None and entry.name == name else None

    def find(self, namespace: str, name: str) -> ModelEntry | None:
        """The model of that name in that namespace (not by alias), if it is in the table."""
        return self._by_key.get((namespace, name))

    def __len__(self) -> int:
        return len(self.models)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingTable) and self.models == other.models

    __hash__ = None  # type: ignore[assignment]
