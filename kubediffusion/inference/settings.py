"""Settings of one inference server: environment ``KD_INFERENCE_*`` and the matching CLI flags.

Every field is an environment variable (``KD_INFERENCE_MODEL_DIR``) and a flag (``--model-dir``);
a flag wins over the environment. JSON-valued fields (``ALIASES``, ``DEFAULTS``, ``LIMITS``,
``PRESETS``) take JSON in both places; ``--aliases`` also takes a comma-separated list.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset

Dtype = Literal["float16", "bfloat16", "float32"]
Device = Literal["auto", "cpu", "cuda"]


class InferenceSettings(BaseSettings):
    """One model server. ``max_queue`` counts images waiting (not requests, not the running batch)."""

    model_config = SettingsConfigDict(env_prefix="KD_INFERENCE_", extra="forbid", frozen=True, protected_namespaces=())

    model_dir: Path = Field(default=Path("/models/model"), description="diffusers pipeline directory")
    model_name: str = Field(default="", description="name clients use; empty = the directory's name")
    aliases: list[str] = Field(default_factory=list, description="other names this model answers to (JSON list)")
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


_JSON_FIELDS = {"defaults", "limits", "presets"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubediffusion inference",
        description="Serve one diffusers text-to-image model behind the OpenAI Images API.",
        epilog="Every flag is also an environment variable KD_INFERENCE_<NAME>; the flag wins.",
    )
    for name, field in InferenceSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_ = f"{field.description} (env KD_INFERENCE_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_)
    return parser


def _parse_aliases(raw: str) -> list[str]:
    if raw.strip().startswith("["):
        value = json.loads(raw)
        if not isinstance(value, list):
            raise ValueError("--aliases must be a JSON list or a comma-separated list")
        return [str(item) for item in value]
    return [part for part in raw.split(",") if part.strip()]


def settings_from_args(argv: list[str]) -> InferenceSettings:
    """Flags override environment variables; raises SystemExit (argparse) or pydantic ValidationError."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for name, value in vars(args).items():
        if value is None:
            continue
        if name in _JSON_FIELDS:
            overrides[name] = json.loads(value)
        elif name == "aliases":
            overrides[name] = _parse_aliases(value)
        else:
            overrides[name] = value
    return InferenceSettings(**overrides)
