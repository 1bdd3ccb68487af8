"""Operator settings, all in one place: CLI flags and ``KD_OPERATOR_*`` environment variables.

pydantic-settings reads both in one step (``CliApp.run(OperatorSettings, cli_args=argv)``); a flag
wins over the environment. ``OperatorSettings()`` alone reads only the environment (the chart sets it).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubediffusion import __version__
from kubediffusion.imagemodel.spec import HardwareProfile
from kubediffusion.operator.policy import DownloadPolicy

DEFAULT_IMAGE = f"ghcr.io/kubediffusion/kubediffusion-inference:{__version__}"  # the chart's default too
DEFAULT_ADAPTER_IMAGE = f"ghcr.io/kubediffusion/kubediffusion:{__version__}"  # the operator's own (no torch)


def _items(value: object) -> object:
    """A list from a flag or variable: ``a,b``, ``a b`` or a JSON list (a flag may also be repeated)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item for item in text.replace(",", " ").split() if item]
    return value


def _networks(value: object) -> object:
    """CIDRs (or single addresses) in canonical form, as fetch-model and a NetworkPolicy read them."""
    items = _items(value)
    if not isinstance(items, list | tuple):
        return items
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP network (CIDR such as 10.0.0.0/8)") from exc
    return out


def _no_blanks(items: list[str]) -> list[str]:
    for item in items:
        if not item or any(c.isspace() for c in item) or "://" in item:
            raise ValueError(f"{item!r} is not a host or image prefix (no scheme, no spaces)")
    return items


def _selector(text: str) -> str:
    for term in (t.strip() for t in text.split(",") if t.strip()):
        key, eq, value = term.partition("=")
        if not eq or not key.strip() or value.startswith("=") or key.endswith("!"):
            raise ValueError(f"{term!r} is not a key=value label term (only equality terms)")
    return text


def _otlp_url(text: str) -> str:
    if text and (not text.startswith(("http://", "https://")) or any(c.isspace() for c in text)):
        raise ValueError(f"{text!r} is not an http(s) URL (e.g. http://otel-collector.monitoring:4318)")
    return text


Items = Annotated[list[str], NoDecode, BeforeValidator(_items), AfterValidator(_no_blanks)]
Selector = Annotated[str, AfterValidator(_selector)]
Networks = Annotated[list[str], NoDecode, BeforeValidator(_networks)]


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
    adapter_image: str = Field(
        default=DEFAULT_ADAPTER_IMAGE,
        description="image of the model server in front of another engine than diffusers, and of the stub"
        " (no torch; spec.image wins)",
    )
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
    download_allow_http: bool = Field(
        default=False, description="let url sources download over plain http (default: https only)"
    )
    download_allowed_networks: Networks = Field(
        default_factory=list,
        description="comma-separated CIDRs downloads may reach though internal (loopback, link-local, private,"
        " CGNAT...), e.g. an in-cluster mirror; default: none",
    )
    download_allowed_hosts: Items = Field(
        default_factory=list,
        description="comma-separated hosts url sources may download from (exact, or *.example.com); empty = any",
    )
    allowed_images: Items = Field(
        default_factory=list,
        description="comma-separated registry/repository prefixes spec.image must be under (e.g. ghcr.io/acme/);"
        " the inference image is always allowed; empty = any image",
    )
    autoscale_interval_seconds: float = Field(
        default=5.0, ge=0, description="how often the autoscaler samples demand and decides (0 = no autoscaler)"
    )
    autoscale_window_seconds: float = Field(
        default=30.0, gt=0, description="demand is averaged over this many seconds before a decision"
    )
    metrics_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="timeout of one scrape of a pod's or router's /metrics"
    )
    metrics_concurrency: int = Field(default=16, ge=1, le=256, description="scrapes in flight at once")
    router_namespace: str = Field(
        default="", description="namespace of the router pods whose in-flight and held requests count as demand"
    )
    router_selector: Selector = Field(
        default="",
        description="label selector (k=v,k2=v2) of the router pods; empty = demand from model pods only",
    )
    otlp_endpoint: Annotated[str, AfterValidator(_otlp_url)] = Field(
        default="",
        description="OTLP/HTTP collector base URL the model pods send OpenTelemetry spans to (their"
        " KD_INFERENCE_OTLP_ENDPOINT); empty = pods do not trace",
    )
    health_port: int = Field(default=8080, ge=0, le=65535, description="liveness port, /healthz (0 = none)")
    verbose: bool = Field(default=False, description="debug logging")

    @property
    def namespaces(self) -> list[str]:
        return [ns.strip() for ns in self.namespace.split(",") if ns.strip()]

    @property
    def router_labels(self) -> dict[str, str]:
        """``router_selector`` as a map (equality terms only, as the chart writes it)."""
        pairs = (term.split("=", 1) for term in self.router_selector.split(",") if "=" in term)
        return {key.strip(): value.strip() for key, value in pairs}

    @property
    def download(self) -> DownloadPolicy:
        return DownloadPolicy(
            allow_http=self.download_allow_http,
            allowed_networks=tuple(self.download_allowed_networks),
            allowed_hosts=tuple(host.lower() for host in self.download_allowed_hosts),
        )
