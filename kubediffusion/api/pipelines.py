"""What a model's pipeline offers beyond the OpenAI fields, and how a request chooses from it.

Settings (one model's, camelCase on the wire like :mod:`.limits`; the model server reads them as
``KD_INFERENCE_ADAPTERS``, ``_SCHEDULER``, ``_COMPONENTS``, ``_SAFETY``, see docs/pipelines.md):
``AdapterConfig`` (a LoRA loaded once at start), ``SchedulerConfig`` (the scheduler class, its config
overrides and the classes a request may pick), ``ComponentConfig`` (a UNet, transformer or VAE loaded
in place of the pipeline's own) and ``SafetyConfig`` (image checker, action, blocked terms).

Requests (extensions of OpenAI's request): ``adapters: [{name, scale}]`` (several at once), or the model
name ``<model>:<adapter>`` (the adapter at its default scale); ``scheduler`` (a class name from the
model's allow-list); ``moderation: low`` (skips the image checker only where the model allows it).

Adapter scales lie in [-2, 2]: negative scales are real use (concept-slider LoRAs subtract a concept),
and beyond 2 an ordinary LoRA overwhelms the base weights and yields noise, so a client cannot ask a GPU
for that. A scale of 0 adds nothing: the adapter is left out, and the request shares batches with
base-model requests. :class:`PipelineChoice` is what a request resolved to, part of its batch key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubediffusion.api.errors import (
    AdapterNotFoundError,
    InvalidRequestError,
    ModelNotFoundError,
    ModerationBlockedError,
)
from kubediffusion.api.moderation import BlockedTerms, check_terms

MAX_ADAPTER_SCALE = 2.0
MAX_REQUEST_ADAPTERS = 8
MAX_ADAPTERS = 64
# No "." (PEFT keys its modules by adapter name) and no ":" (it follows the model's name in "<model>:<adapter>").
ADAPTER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$"
SCHEDULER_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
ComponentName = Literal["unet", "transformer", "vae"]
CHECKER_KEYWORDS = ("none", "auto", "pipeline")
Scale = Annotated[float, Field(ge=-MAX_ADAPTER_SCALE, le=MAX_ADAPTER_SCALE, allow_inf_nan=False)]


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _weight_file(value: str | None) -> str | None:
    """A ``.safetensors`` file (never a pickle) at a relative path inside the directory."""
    if value is None:
        return None
    parts = PurePosixPath(value).parts
    if not value.endswith(".safetensors") or not parts or parts[0] == "/" or ".." in parts:
        raise ValueError(f"file must be a relative path to a .safetensors file, got {value!r}")
    return value


class AdapterConfig(_CamelModel):
    """A LoRA: ``path`` is its directory (the weight file ``file`` in it, else
    ``pytorch_lora_weights.safetensors``, else its only ``.safetensors`` file) or the file itself."""

    name: Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)]
    path: Annotated[str, Field(min_length=1)]
    file: str | None = None
    default_scale: Scale = 1.0

    @field_validator("file")
    @classmethod
    def _safetensors(cls, value: str | None) -> str | None:
        return _weight_file(value)

    @model_validator(mode="after")
    def _one_file(self) -> AdapterConfig:
        if self.file is not None and self.path.endswith(".safetensors"):
            raise ValueError(f"adapter {self.name}: path names a file already; leave file out")
        return self


class SchedulerConfig(_CamelModel):
    """``name`` empty keeps the pipeline's own class; ``config`` overrides its saved configuration (for
    the default and every allowed class); ``allowed`` are the classes a request may name."""

    name: Annotated[str, Field(pattern=r"^$|" + SCHEDULER_NAME_PATTERN)] = Field(
        default="", description="diffusers scheduler class; empty = the pipeline's own"
    )
    config: dict[str, JsonValue] = Field(
        default_factory=dict, description='JSON overrides of its config, e.g. {"timestep_spacing": "trailing"}'
    )
    allowed: list[Annotated[str, Field(pattern=SCHEDULER_NAME_PATTERN)]] = Field(
        default_factory=list, max_length=32, description="JSON list of classes a request may name"
    )


class ComponentConfig(_CamelModel):
    """A diffusers model directory at ``path``; or, with ``file``, a diffusers-format state dict (the
    config from ``path/config.json`` when there is one, else the pipeline's own component's)."""

    path: Annotated[str, Field(min_length=1)]
    file: str | None = None

    @field_validator("file")
    @classmethod
    def _safetensors(cls, value: str | None) -> str | None:
        return _weight_file(value)


class SafetyConfig(_CamelModel):
    """``checker``: ``none``; ``auto`` (the pipeline's own checker when it ships one, else none);
    ``pipeline`` (its own; the model fails to load without one); or a checker directory's path.
    ``action``: what flagged images get. ``allowLowModeration``: a request's ``moderation: low`` skips
    the image checker (blocked terms still apply)."""

    checker: Annotated[str, Field(min_length=1)] = Field(
        default="auto", description="none, auto (the pipeline's own if any), pipeline, or a checker directory"
    )
    action: Literal["reject", "blur"] = Field(default="reject", description="what flagged images get")
    blocked_terms: list[str] = Field(default_factory=list, description="JSON list of terms refused in prompts")
    allow_low_moderation: bool = Field(default=False, description="moderation: low skips the image checker")

    @field_validator("blocked_terms")
    @classmethod
    def _terms(cls, value: list[str]) -> list[str]:
        return check_terms(value)

    @property
    def checker_path(self) -> str | None:
        return None if self.checker in CHECKER_KEYWORDS else self.checker


class AdapterRequest(BaseModel):
    """One item of a request's ``adapters``; ``scale`` null is the adapter's default scale."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    scale: Scale | None = None


@dataclass(frozen=True)
class PipelineChoice:
    """What a request resolved to: adapters (name, scale) sorted by name, none at scale 0; a scheduler
    class other than the model's default, or None; ``low`` only where the model allows it."""

    adapters: tuple[tuple[str, float], ...] = ()
    scheduler: str | None = None
    moderation: Literal["auto", "low"] = "auto"

    @property
    def batch_key(self) -> tuple[tuple[tuple[str, float], ...], str | None]:
        return self.adapters, self.scheduler

    @classmethod
    def unchecked(
        cls, adapters: Sequence[AdapterRequest] | None, scheduler: str | None, moderation: str | None
    ) -> PipelineChoice:
        """For a caller that does not know the model's options: the request as sent (default scale 1)."""
        chosen = {item.name: item.scale if item.scale is not None else 1.0 for item in adapters or ()}
        return cls(_normalized(chosen), scheduler, "low" if moderation == "low" else "auto")


def _normalized(chosen: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((name, float(scale)) for name, scale in chosen.items() if scale != 0))


@dataclass(frozen=True)
class PipelineOptions:
    """One model's offer to requests, built from its settings (:meth:`of`); resolves requests against it."""

    adapters: Mapping[str, float] = field(default_factory=dict)  # name -> default scale
    scheduler: str = ""  # the default class ("" = the pipeline's own)
    schedulers: frozenset[str] = frozenset()  # what a request may name
    blocked_terms: BlockedTerms = field(default_factory=BlockedTerms)
    allow_low_moderation: bool = False

    @classmethod
    def of(cls, adapters: Sequence[AdapterConfig], scheduler: SchedulerConfig, safety: SafetyConfig) -> PipelineOptions:
        return cls(
            adapters={adapter.name: adapter.default_scale for adapter in adapters},
            scheduler=scheduler.name,
            schedulers=frozenset(scheduler.allowed) | ({scheduler.name} if scheduler.name else set()),
            blocked_terms=BlockedTerms(safety.blocked_terms),
            allow_low_moderation=safety.allow_low_moderation,
        )

    def model_adapter(self, model: str | None, names: Collection[str]) -> str | None:
        """The adapter ``<model>:<adapter>`` names (None for the model itself); 404 for anything else."""
        if model is None or model in names:
            return None
        base, colon, adapter = model.rpartition(":")
        if colon and base in names and adapter in self.adapters:
            return adapter
        raise ModelNotFoundError(model)

    def check_prompt(self, prompt: str, *, param: str = "prompt") -> None:
        """400 ``moderation_blocked`` when the client's prompt holds a blocked term (see :mod:`.moderation`)."""
        if self.blocked_terms.find(prompt) is not None:
            raise ModerationBlockedError("input", param=param)

    def choose(
        self,
        *,
        adapters: Sequence[AdapterRequest] | None,
        scheduler: str | None,
        moderation: str | None,
        model_adapter: str | None = None,
        model: str = "",
    ) -> PipelineChoice:
        """The request's adapters (404 ``model_not_found`` for one the model lacks; 400 for one named
        twice; the list's scale wins over the model name's default), scheduler (400 unless allowed)."""
        chosen: dict[str, float] = {}
        if model_adapter is not None:
            chosen[model_adapter] = self.adapters[model_adapter]
        seen: set[str] = set()
        for item in adapters or ():
            if item.name not in self.adapters:
                raise AdapterNotFoundError(item.name, model)
            if item.name in seen:
                raise InvalidRequestError(
                    f"Invalid 'adapters': '{item.name}' is named twice.", param="adapters", code="duplicate_adapter"
                )
            seen.add(item.name)
            chosen[item.name] = item.scale if item.scale is not None else self.adapters[item.name]
        low = moderation == "low" and self.allow_low_moderation
        return PipelineChoice(_normalized(chosen), self._scheduler(scheduler), "low" if low else "auto")

    def _scheduler(self, name: str | None) -> str | None:
        if name is None or name == self.scheduler:
            return None
        if name in self.schedulers:
            return name
        offered = ", ".join(sorted(self.schedulers)) if self.schedulers else "none (the model's own only)"
        raise InvalidRequestError(
            f"Invalid 'scheduler': {name!r} is not offered by this model. Choose one of: {offered}.",
            param="scheduler",
            code="invalid_value",
        )


def resolve_choice(
    options: PipelineOptions | None,
    *,
    prompt: str,
    adapters: Sequence[AdapterRequest] | None,
    scheduler: str | None,
    moderation: str | None,
    model: str | None,
    model_adapter: str | None,
) -> PipelineChoice:
    """Blocked terms first (nothing else is worth checking in a refused request), then the choice;
    ``options`` None: taken as sent, unchecked. ``model_adapter``: the adapter the model name picked."""
    if options is None:
        return PipelineChoice.unchecked(adapters, scheduler, moderation)
    options.check_prompt(prompt)
    base = (model or "").rpartition(":")[0] if model_adapter is not None else (model or "")
    return options.choose(
        adapters=adapters, scheduler=scheduler, moderation=moderation, model_adapter=model_adapter, model=base
    )
