"""``spec.adapters``, ``spec.scheduler``, ``spec.components`` and ``spec.safety``: what shapes a model's
pipeline beyond its own weights (docs/pipelines.md).

Each is the model server's setting (:mod:`kubediffusion.api.pipelines`) with a *source* where the server
has a *path*: the operator fetches the weights into the model's copy in the cache volume and passes the
paths. The rules are the server's own: every part is checked by building the server's config from it
(:meth:`Adapter.config` and the others), so a spec the operator accepts is one the server starts with.
The CRD's CEL rules say the same to the API server.

Layout of the fetched weights inside the model's copy (``/models/<cache-key>``), the server's proposed one:
``adapters/<name>/``, ``components/<unet|transformer|vae>/``, ``safety-checker/``. A pvc source is mounted
read-only at ``/extras/<same>`` instead (nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kubediffusion.api.moderation import check_terms
from kubediffusion.api.pipelines import (
    ADAPTER_NAME_PATTERN,
    CHECKER_KEYWORDS,
    MAX_ADAPTERS,
    AdapterConfig,
    ComponentConfig,
    ComponentName,
    SafetyConfig,
    Scale,
    SchedulerConfig,
)
from kubediffusion.imagemodel.sources import ExtraSource, HuggingFaceSource
from kubediffusion.imagemodel.wire import SpecPart

# A Hugging Face repo id (owner/name), as spec.source.huggingface.repo allows it.
REPO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
CHECKER_PATTERN = rf"^({'|'.join(CHECKER_KEYWORDS)})$|{REPO_ID_PATTERN}"
COMPONENT_NAMES: tuple[ComponentName, ...] = ("unet", "transformer", "vae")
EXTRAS_MOUNT = "/extras"  # where pvc sources of extra weights are mounted in a model pod
CHECKER_DIR = "safety-checker"
# A placeholder path: the spec has sources, the server's config paths; only the rules are checked here.
_SOME_PATH = "/models/spec"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class Adapter(SpecPart):
    """A LoRA a request may pick (``<model>:<name>`` or ``adapters: [{name, scale}]``)."""

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    source: ExtraSource
    file: str | None = None
    default_scale: Scale = 1.0

    @model_validator(mode="after")
    def _server_accepts(self) -> Adapter:
        self.config(_SOME_PATH)
        return self

    def config(self, path: str) -> AdapterConfig:
        """The server's setting for this adapter found at ``path`` (ValueError when it would refuse it)."""
        try:
            return AdapterConfig(name=self.name, path=path, file=self.file, default_scale=self.default_scale)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None


class Component(SpecPart):
    """A UNet, transformer or VAE loaded in place of the pipeline's own: a diffusers model directory, or
    with ``file`` one diffusers-format state dict (e.g. sdxl_lightning_4step_unet.safetensors)."""

    source: ExtraSource
    file: str | None = None

    @model_validator(mode="after")
    def _server_accepts(self) -> Component:
        self.config(_SOME_PATH)
        return self

    def config(self, path: str) -> ComponentConfig:
        try:
            return ComponentConfig(path=path, file=self.file)
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None


class Components(SpecPart):
    unet: Component | None = None
    transformer: Component | None = None
    vae: Component | None = None

    def items(self) -> list[tuple[ComponentName, Component]]:
        return [(name, part) for name in COMPONENT_NAMES if (part := getattr(self, name)) is not None]


class Safety(SpecPart):
    """``checker``: none, auto (the pipeline's own when it ships one), pipeline, or a Hugging Face repo id
    of a checker the cache Job fetches (e.g. CompVis/stable-diffusion-safety-checker, at main)."""

    checker: str = Field(default="auto", pattern=CHECKER_PATTERN, max_length=200)
    action: Literal["reject", "blur"] = "reject"
    blocked_terms: list[str] = Field(default_factory=list)
    allow_low_moderation: bool = False

    @field_validator("blocked_terms")
    @classmethod
    def _terms(cls, value: list[str]) -> list[str]:
        return check_terms(value)

    @model_validator(mode="after")
    def _server_accepts(self) -> Safety:
        self.config(_SOME_PATH)
        return self

    @property
    def checker_repo(self) -> str | None:
        return None if self.checker in CHECKER_KEYWORDS else self.checker

    def config(self, checker_path: str) -> SafetyConfig:
        """The server's setting; a checker repo becomes ``checker_path``, where it was fetched to."""
        checker = checker_path if self.checker_repo is not None else self.checker
        try:
            return SafetyConfig(
                checker=checker,
                action=self.action,
                blocked_terms=self.blocked_terms,
                allow_low_moderation=self.allow_low_moderation,
            )
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None


@dataclass(frozen=True)
class Extra:
    """Extra weights of a model's pipeline: where they come from and where they go.

    ``subdir``: inside the model's copy (fetched) or under :data:`EXTRAS_MOUNT` (a pvc, mounted);
    ``container``: the name of the container that fetches it (a DNS label; adapter names may hold ``_``);
    ``field``: its source's place in the spec, for messages.
    """

    subdir: str
    source: ExtraSource
    file: str | None
    container: str
    field: str

    @property
    def fetched(self) -> bool:
        return self.source.needs_fetch

    def path(self, weights_dir: str) -> str:
        """Where the model server finds it, given the directory of the model's copy."""
        return f"{weights_dir}/{self.subdir}" if self.fetched else f"{EXTRAS_MOUNT}/{self.subdir}"


def extras(adapters: list[Adapter], components: Components | None, safety: Safety | None) -> list[Extra]:
    """Every extra weight source of a spec, in a fixed order (adapters, components, checker)."""
    out = [
        Extra(f"adapters/{adapter.name}", adapter.source, adapter.file, f"adapter-{index}", f"adapters.{index}.source")
        for index, adapter in enumerate(adapters)
    ]
    for name, part in components.items() if components is not None else []:
        field = f"components.{name}.source"
        out.append(Extra(f"components/{name}", part.source, part.file, f"component-{name}", field))
    repo = safety.checker_repo if safety is not None else None
    if repo is not None:
        checker = ExtraSource(huggingface=HuggingFaceSource(repo=repo))
        out.append(Extra(CHECKER_DIR, checker, None, CHECKER_DIR, "safety.checker"))
    return out


def check_adapters(adapters: list[Adapter]) -> tuple[str, str] | None:
    """(field, message) for what the server refuses of the list as a whole; None: fine."""
    if len(adapters) > MAX_ADAPTERS:
        return "adapters", f"at most {MAX_ADAPTERS} adapters (got {len(adapters)})"
    seen: set[str] = set()
    for index, adapter in enumerate(adapters):
        if adapter.name in seen:
            return f"adapters.{index}.name", f"adapter {adapter.name!r} is named twice"
        seen.add(adapter.name)
    return None


__all__ = [
    "Adapter",
    "Component",
    "Components",
    "Extra",
    "Safety",
    "SchedulerConfig",
    "check_adapters",
    "extras",
]
