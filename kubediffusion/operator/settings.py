"""Operator settings, all in one place: CLI flags and ``KD_OPERATOR_*`` environment variables.

pydantic-settings reads both in one step (``CliApp.run(OperatorSettings, cli_args=argv)``); a flag
wins over the environment. ``OperatorSettings()`` alone reads only the environment (the chart sets it).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubediffusion.imagemodel.spec import HardwareProfile

DEFAULT_IMAGE = "ghcr.io/kubediffusion/inference:0.1.0"


class OperatorSettings(BaseSettings):
    """
    Run the ImageModel operator (kopf) until SIGTERM: ImageModel -> cache PVC + Job, Deployment, Service.

    Every option is also an environment variable KD_OPERATOR_<NAME> (e.g. KD_OPERATOR_HEALTH_PORT); a flag
    wins over the environment. The Kubernetes login is the in-cluster service account, else $KUBECONFIG.
    """  # starts on a new line so that --help (which prints it) can dedent it

    model_config = SettingsConfigDict(
        env_prefix="KD_OPERATOR_",
        extra="ignore",
        frozen=True,
        cli_prog_name="kubediffusion operator",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    namespace: str = Field(default="", description="comma-separated namespaces to watch; empty = all")
    inference_image: str = Field(default=DEFAULT_IMAGE, description="image of the model pods (spec.image wins)")
    profiles: dict[str, HardwareProfile] = Field(
        default_factory=dict,
        description='hardware profiles, JSON: {"nvidia-l4": {"gpus": 1, "nodeSelector": {...}}, ...}',
    )
    resync_seconds: float = Field(
        default=60.0, gt=0, description="how often a settled model is re-applied (also corrects drift)"
    )
    poll_seconds: float = Field(
        default=5.0, gt=0, description="how often a model that is still caching or loading is looked at"
    )
    health_port: int = Field(default=8080, ge=0, le=65535, description="liveness port, /healthz (0 = none)")
    verbose: bool = Field(default=False, description="debug logging")

    @property
    def namespaces(self) -> list[str]:
        return [ns.strip() for ns in self.namespace.split(",") if ns.strip()]
