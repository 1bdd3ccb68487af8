"""Operator settings, all in one place: environment variables with prefix ``KD_OPERATOR_``.

``NAMESPACE`` (empty = every namespace), ``INFERENCE_IMAGE``, ``PROFILES`` (JSON map name -> hardware
profile, e.g. ``{"nvidia-l4": {"gpus": 1, "nodeSelector": {...}}}``), ``RESYNC_SECONDS`` (how often a
settled model is re-applied, which also corrects drift), ``POLL_SECONDS`` (how often a model that is
still caching or loading is looked at again), ``HEALTH_PORT`` (kopf liveness endpoint /healthz).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubediffusion.imagemodel.spec import HardwareProfile

DEFAULT_IMAGE = "ghcr.io/kubediffusion/inference:0.1.0"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_OPERATOR_", extra="ignore", frozen=True)

    namespace: str = ""
    inference_image: str = DEFAULT_IMAGE
    profiles: dict[str, HardwareProfile] = Field(default_factory=dict)
    resync_seconds: float = Field(default=60.0, gt=0)
    poll_seconds: float = Field(default=5.0, gt=0)
    health_port: int = Field(default=8080, ge=0, le=65535)

    @property
    def namespaces(self) -> list[str]:
        return [ns.strip() for ns in self.namespace.split(",") if ns.strip()]


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    return OperatorSettings()
