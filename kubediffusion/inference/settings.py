"""Settings of one inference server: environment ``KD_INFERENCE_*`` and the matching CLI flags.

pydantic-settings reads both in one step (``settings_from_cli``): every field is an environment variable
(``KD_INFERENCE_MODEL_DIR``) and a kebab-case flag (``--model-dir``); a flag wins over the environment.
Booleans are ``--warmup``/``--no-warmup``. Structured fields (``ALIASES``, ``DEFAULTS``, ``LIMITS``,
``PRESETS``) take JSON in both places; on the command line ``--aliases`` also takes a comma-separated
list, and the library adds dotted flags for single keys (``--defaults.steps 2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset

Dtype = Literal["float16", "bfloat16", "float32"]
Device = Literal["auto", "cpu", "cuda"]


class InferenceSettings(BaseSettings):
    """Serve one diffusers text-to-image model behind the OpenAI Images API. A flag wins over its env variable."""

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
    dtype: Dtype = Field(default="float16", description="weights dtype; float16 on CPU falls back to float32")
    device: Device = Field(default="auto", description="auto = cuda when available, else cpu")
    host: str = Field(default="127.0.0.1", description="listen address (pods set 0.0.0.0)")
    port: int = Field(default=8000, ge=0, le=65535, description="listen port")
    max_batch_size: int = Field(default=4, ge=1, le=64, description="most images in one pipeline call")
    batch_window_ms: float = Field(default=20.0, ge=0, le=10_000, description="max wait to fill a batch")
    max_queue: int = Field(default=16, ge=1, le=10_000, description="most images waiting; beyond it 429")
    warmup: bool = Field(default=True, description="make one image before reporting ready")
    compile: bool = Field(default=False, description="torch.compile the UNet/VAE (CUDA only)")
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults, description="JSON GenerationDefaults")
    limits: GenerationLimits = Field(default_factory=GenerationLimits, description="JSON GenerationLimits")
    presets: dict[str, StylePreset] = Field(default_factory=dict, description="JSON map name -> StylePreset")
    log_level: str = Field(default="info", description="python logging level")
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

    @property
    def served_name(self) -> str:
        return self.model_name or self.model_dir.name or "model"


def settings_from_cli(argv: Sequence[str]) -> InferenceSettings:
    """Flags over ``KD_INFERENCE_*`` over defaults. ``--help`` prints and raises SystemExit(0); bad input
    raises ``pydantic.ValidationError`` or ``pydantic_settings.SettingsError`` (a ValueError)."""
    return CliApp.run(InferenceSettings, cli_args=list(argv))
