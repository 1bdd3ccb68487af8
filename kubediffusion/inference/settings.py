"""Settings of one inference server: environment ``KD_INFERENCE_*`` and the matching CLI flags.

pydantic-settings reads both in one step (``settings_from_cli``): every field is an environment variable
(``KD_INFERENCE_MODEL_DIR``) and a kebab-case flag (``--model-dir``); a flag wins over the environment.
Booleans are ``--warmup``/``--no-warmup``. Structured fields (``ALIASES``, ``DEFAULTS``, ``LIMITS``,
``PRESETS``, ``ENGINE_SIZES``, ``ADAPTERS``, ``SCHEDULER``, ``COMPONENTS``, ``SAFETY``) take JSON in both
places; on the command line ``--aliases`` also takes a comma-separated list, and the library adds dotted
flags for single keys (``--defaults.steps 2``, ``--safety.action blur``).

The pipeline fields (``adapters``, ``scheduler``, ``components``, ``safety``; shapes in
:mod:`kubediffusion.api.pipelines`, semantics in docs/pipelines.md) belong to the diffusers engine; the
others take only the blocked terms of ``safety`` (a text check, before anything is queued).

The ``engine`` fields choose what makes the images (docs/engines/): ``diffusers`` (the default) loads
``model_dir``; the adapters (``invokeai``, ``comfyui``, ``automatic1111``, ``openai``) call the engine at
``engine_url``; ``stub`` draws test patterns. The upstream's credential is a secret, so it is never a
flag: ``engine_api_key_file`` names a file holding it, or the variable ``KD_INFERENCE_ENGINE_API_KEY``
holds it (read by :func:`engine_api_key`; the file wins).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset, parse_size
from kubediffusion.api.pipelines import (
    MAX_ADAPTERS,
    AdapterConfig,
    ComponentConfig,
    ComponentName,
    SafetyConfig,
    SchedulerConfig,
)

Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Device = Literal["auto", "cpu", "cuda"]
EngineName = Literal["diffusers", "invokeai", "comfyui", "automatic1111", "openai", "stub"]
ADAPTERS: frozenset[str] = frozenset({"invokeai", "comfyui", "automatic1111", "openai"})  # need engine_url
API_KEY_ENV = "KD_INFERENCE_ENGINE_API_KEY"


class InferenceSettings(BaseSettings):
    """Serve one text-to-image model behind the OpenAI Images API: a diffusers pipeline, or another engine
    (--engine, docs/engines/). A flag wins over its env variable."""

    model_config = SettingsConfigDict(
        env_prefix="KD_INFERENCE_",
        extra="forbid",
        frozen=True,
        protected_namespaces=(),
        cli_prog_name="kubediffusion inference",
        cli_kebab_case=True,
        cli_implicit_flags="dual",
        cli_show_env_vars=True,
        cli_exit_on_error=False,  # errors raise; main() reports them and exits 2
    )

    model_dir: Path = Field(default=Path("/models/model"), description="diffusers pipeline directory")
    model_name: str = Field(default="", description="name clients use; empty = the directory's name")
    aliases: list[str] = Field(
        default_factory=list, description="other names this model answers to (JSON list; on the CLI also a,b)"
    )
    pipeline: str = Field(default="auto", description="'auto' (AutoPipelineForText2Image) or a diffusers class")
    dtype: Dtype = Field(
        default="auto",
        description="weights dtype; auto = bfloat16 on GPUs that have it, else float16 (float32 on CPU, where "
        "float16 also falls back to float32)",
    )
    device: Device = Field(default="auto", description="auto = cuda when available, else cpu")
    host: str = Field(default="127.0.0.1", description="listen address (pods set 0.0.0.0)")
    port: int = Field(default=8000, ge=0, le=65535, description="listen port")
    max_batch_size: int = Field(default=4, ge=1, le=64, description="most images in one pipeline call")
    batch_window_ms: float = Field(default=20.0, ge=0, le=10_000, description="max wait to fill a batch")
    max_queue: int = Field(default=16, ge=1, le=10_000, description="most images waiting; beyond it 429")
    warmup: bool = Field(default=True, description="make one image before reporting ready")
    compile: bool = Field(default=False, description="torch.compile the UNet/VAE (CUDA only)")
    compile_cache_dir: Path | None = Field(
        default=None,
        description="writable directory that outlives the pod: torch.compile's artifacts are loaded from it "
        "before warm-up and saved to it after (compile only); unset = compile from scratch each start",
    )
    png_compress_level: int = Field(
        default=1, ge=0, le=9, description="zlib level of PNG answers (0-9; 1 is fast, 6 is Pillow's default)"
    )
    vae_slicing_pixels: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        description="decode a batch one image at a time when batch x width x height exceeds this (0 = never)",
    )
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults, description="JSON GenerationDefaults")
    limits: GenerationLimits = Field(default_factory=GenerationLimits, description="JSON GenerationLimits")
    presets: dict[str, StylePreset] = Field(default_factory=dict, description="JSON map name -> StylePreset")
    log_level: str = Field(default="info", description="python logging level")
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object per line (request id, trace id)"
    )
    otlp_endpoint: str = Field(
        default="",
        description="OTLP/HTTP collector base URL for OpenTelemetry spans (/v1/traces is added); empty = the "
        "standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, none of them = tracing off",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest request body; beyond it 413")
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest edit/variation upload (multipart); beyond it 413"
    )
    body_read_timeout: float = Field(
        default=30.0, gt=0, description="seconds a request body may stall between reads; then 408"
    )
    header_read_timeout: float = Field(
        default=10.0, gt=0, description="seconds for a request's headers to arrive; then the connection is closed"
    )
    engine: EngineName = Field(
        default="diffusers",
        description="what makes the images: diffusers (model_dir), invokeai, comfyui, automatic1111, openai "
        "(an engine at engine_url) or stub (test patterns, no torch)",
    )
    engine_url: str = Field(default="", description="the engine's base URL (adapters), e.g. http://127.0.0.1:7860")
    engine_model: str = Field(
        default="",
        description="the engine's model: InvokeAI model key, ComfyUI checkpoint ({{model}}), AUTOMATIC1111 "
        "checkpoint title, upstream model name (openai)",
    )
    engine_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="most seconds one upstream job may take, queueing included; then 504",
    )
    engine_poll_interval_seconds: float = Field(
        default=0.25, gt=0, le=60, description="how often job status is polled (invokeai, comfyui)"
    )
    engine_ready_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="seconds the upstream's health check may take (/readyz)"
    )
    engine_api_key_file: Path | None = Field(
        default=None, description=f"file holding the upstream's credential (else env {API_KEY_ENV})"
    )
    engine_workflow: Path | None = Field(
        default=None, description="comfyui: an API-format workflow JSON with {{placeholders}} (default: built in)"
    )
    engine_sampler: str = Field(
        default="", description="the engine's sampler/scheduler name; empty = the adapter's default"
    )
    engine_max_n: int = Field(default=10, ge=1, le=10, description="most images one upstream call makes")
    engine_sizes: list[str] = Field(
        default_factory=list, description="sizes the upstream accepts (JSON list of WxH); empty = any"
    )
    engine_forward_extensions: bool = Field(
        default=False,
        description="openai: forward negative_prompt, num_inference_steps, guidance_scale, seed (else refused)",
    )

    adapters: list[AdapterConfig] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description="JSON list of LoRA adapters {name, path, file?, defaultScale?}, loaded once at start",
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig,
        description="JSON {name?, config?, allowed?}: scheduler class, config overrides, classes a request may pick",
    )
    components: dict[ComponentName, ComponentConfig] = Field(
        default_factory=dict,
        description="JSON map unet|transformer|vae -> {path, file?}, loaded in place of the pipeline's own",
    )
    safety: SafetyConfig = Field(
        default_factory=SafetyConfig,
        description="JSON {checker: none|auto|pipeline|DIR, action: reject|blur, blockedTerms, allowLowModeration}",
    )

    @field_validator("aliases")
    @classmethod
    def _aliases_not_blank(cls, value: list[str]) -> list[str]:
        return [alias.strip() for alias in value if alias.strip()]

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.lower() not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level must be critical, error, warning, info or debug, got {value!r}")
        return value.lower()

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("engine_sizes")
    @classmethod
    def _sizes_are_wxh(cls, value: list[str]) -> list[str]:
        for size in value:
            parse_size(size)
        return value

    @model_validator(mode="after")
    def _engine_url_fits_the_engine(self) -> InferenceSettings:
        if self.engine in ADAPTERS:
            parts = urlsplit(self.engine_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"engine {self.engine} needs engine_url, an http(s) URL; got {self.engine_url!r}")
        if self.engine_workflow is not None and self.engine != "comfyui":
            raise ValueError("engine_workflow is a comfyui setting")
        if self.engine != "diffusers":
            diffusers_only = {
                "adapters": bool(self.adapters),
                "scheduler": self.scheduler != SchedulerConfig(),
                "components": bool(self.components),
                "safety.checker": self.safety.checker not in ("none", "auto"),
            }
            named = [name for name, set_ in diffusers_only.items() if set_]
            if named:
                raise ValueError(f"{', '.join(named)}: diffusers engine settings (engine is {self.engine})")
        return self

    @model_validator(mode="after")
    def _adapter_names_unique(self) -> InferenceSettings:
        names = [adapter.name for adapter in self.adapters]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"adapter names must be unique: {', '.join(twice)}")
        return self

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.engine != "diffusers":
            return self.engine_model or self.engine
        return self.model_dir.name or "model"


def engine_api_key(settings: InferenceSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The upstream's credential: the file's content (stripped), else the variable, else None. A named file
    that cannot be read raises OSError (the server does not start)."""
    if settings.engine_api_key_file is not None:
        return settings.engine_api_key_file.read_text(encoding="utf-8").strip() or None
    return environ.get(API_KEY_ENV, "").strip() or None


def settings_from_cli(argv: Sequence[str]) -> InferenceSettings:
    """Flags over ``KD_INFERENCE_*`` over defaults. ``--help`` prints and raises SystemExit(0); bad input
    raises ``pydantic.ValidationError`` or ``pydantic_settings.SettingsError`` (a ValueError)."""
    return CliApp.run(InferenceSettings, cli_args=list(argv))
