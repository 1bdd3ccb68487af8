"""Router settings: one pydantic-settings class, environment prefix ``KD_ROUTER_``, a few fields also flags.

Every field is an environment variable, e.g. ``KD_ROUTER_PORT=9000`` or
``KD_ROUTER_CORS_ORIGINS='["https://app.example"]'``. The fields of :class:`RouterFlags` are also
command-line flags (``--port 9000``), read by pydantic-settings together with the environment in
:func:`settings_from_cli`; a flag wins over its variable. Secrets (API keys, the URL signing key) are
never flags: they come from files, so that a Kubernetes Secret can be mounted (or, for the signing
key, from the environment), and stay out of ``ps`` and shell history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, CliSettingsSource, NoDecode, SettingsConfigDict

PROG = "kubediffusion router"

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]  # uvicorn's levels


class RouterFlags(BaseSettings):
    """OpenAI-compatible Images router. Every setting is a KD_ROUTER_* environment variable; a flag wins."""

    model_config = SettingsConfigDict(env_prefix="KD_ROUTER_", extra="ignore")

    host: str = Field(default="0.0.0.0", description="listen address")  # a router in a pod listens on all
    port: int = Field(default=8080, ge=1, le=65535, description="listen port")
    log_level: LogLevel = Field(default="info", description="how much to log")
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object per line (request id, trace id)"
    )
    discovery: Literal["kubernetes", "static"] = Field(
        default="kubernetes", description="where models come from: ImageModels in the cluster, or --static-config"
    )
    static_config: Path | None = Field(default=None, description="YAML list of models (implies --discovery static)")
    namespace: str = Field(default="", description="namespace to watch; empty = all namespaces")
    storage_dir: Path = Field(
        default=Path("/var/lib/kubediffusion/images"), description="where images of url responses are kept"
    )
    tenants_file: Path | None = Field(
        default=None,
        description="YAML file of tenants: their keys, allowed models, rate limits, daily image quotas "
        "(docs/tenancy.md); reloaded on change",
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class RouterSettings(RouterFlags):
    # Discovery
    kubeconfig: Path | None = None  # empty = in-cluster config, else $KUBECONFIG (or ~/.kube/config)
    watch_timeout_seconds: int = Field(default=30, ge=1)  # server-side watch timeout before a re-watch

    # Auth, limits, CORS
    api_keys_file: Path | None = None  # one key per line; unset = auth off; set but empty/missing = all refused
    rate_limit_rps: float = Field(default=10.0, ge=0)  # per API key (or client IP); 0 = off
    rate_limit_burst: int = Field(default=25, ge=1)
    global_rate_limit_rps: float = Field(default=200.0, ge=0)  # whole router; 0 = off
    global_rate_limit_burst: int = Field(default=400, ge=1)
    cors_origins: list[str] = Field(default_factory=list)  # empty = no CORS headers
    max_body_bytes: int = Field(default=1_048_576, ge=1024)  # JSON bodies
    max_upload_bytes: int = Field(default=33_554_432, ge=1024)  # multipart bodies: edits, variations (images)

    # Usage and quotas (ledger.py): counts per UTC day kept in memory per replica, or shared by every
    # replica in this ConfigMap (get + update on it; create when it is missing); empty namespace: the router's
    usage_configmap: str = ""
    usage_namespace: str = ""
    usage_retention_days: int = Field(default=31, ge=1, le=400)  # days of counts GET /v1/usage can answer for
    usage_flush_seconds: float = Field(default=2.0, gt=0)  # shared: how often counts other than admissions are written

    # Tracing (tracing.py): OTLP/HTTP base URL (/v1/traces is added); empty = the standard
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, and none of them = tracing off
    otlp_endpoint: str = ""

    # Brute force: wrong API keys per client address (see ratelimit.FailureThrottle)
    auth_failure_burst: int = Field(default=10, ge=1)  # wrong keys an address may try before it gets 429s
    auth_failure_rps: float = Field(default=0.1, ge=0)  # then one more try per 1/rps s (0.1: every 10 s); 0 = off

    # Client addresses behind proxies (see client_address.py). Proxies' CIDRs as a JSON list or
    # comma-separated ("10.0.0.0/8,fd00::/8"); empty = the socket peer is the client, headers are ignored.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"  # the one the proxies write

    # Slow clients
    body_read_timeout: float = Field(default=30.0, gt=0)  # a request body may stall this long per read; then 408
    header_read_timeout: float = Field(default=10.0, gt=0)  # a request's headers must arrive within this; then closed

    # url responses
    public_base_url: str = ""  # empty = derived from each request's Host
    signing_key: SecretStr | None = None  # prefer signing_key_file
    signing_key_file: Path | None = None  # no key at all = a random one per process (warned)
    url_ttl_seconds: int = Field(default=3600, ge=1)  # also how long stored images are kept
    default_response_format: Literal["url", "b64_json"] = "b64_json"

    # Stored images, fetched again by id (GET /v1/images/{id}) until url_ttl_seconds have passed
    store_default: bool = False  # what a request that does not say `store` gets

    # The older service API (/imagine/*): its /info asks each pod of the default model for this long
    pod_info_timeout: float = Field(default=5.0, gt=0)

    # Upstream (inference pods)
    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_read_timeout: float = Field(default=600.0, gt=0)  # one generation may take minutes
    upstream_write_timeout: float = Field(default=30.0, gt=0)
    upstream_pool_timeout: float = Field(default=10.0, gt=0)
    upstream_max_connections: int = Field(default=512, ge=1)
    max_attempts: int = Field(default=3, ge=1, le=10)  # pods tried per request
    retry_read_timeouts: bool = False  # a read timeout means a pod may still be generating
    eject_seconds: float = Field(default=5.0, ge=0)  # skip a pod this long after a connection failure
    no_endpoint_retry_after: int = Field(default=5, ge=1)  # Retry-After on 503 when no pod is ready

    # Scale from zero (models with autoscaling.minReplicas 0, see holding.py): requests wait for a pod
    max_held_requests: int = Field(default=64, ge=0)  # per model and router replica; more get 429 (bodies: memory)
    hold_timeout_seconds: float = Field(default=600.0, gt=0)  # then 503; a GPU pod's cold start takes minutes
    hold_retry_after: int = Field(default=30, ge=1)  # Retry-After of those 429s and 503s

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _list_or_commas(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        return json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",") if part.strip()]


def flag_parser() -> CliSettingsSource[RouterFlags]:
    """The command line of ``kubediffusion router``: exactly the fields of :class:`RouterFlags`."""
    return CliSettingsSource(
        RouterFlags,
        cli_prog_name=PROG,
        cli_kebab_case=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_show_env_vars=True,
        cli_exit_on_error=False,  # errors raise; main() reports them and exits 2
    )


def settings_from_cli(argv: Sequence[str]) -> RouterSettings:
    """Flags over ``KD_ROUTER_*`` over defaults, in one pydantic-settings build. ``--help`` prints and raises
    SystemExit(0); bad input raises ``pydantic.ValidationError`` or ``pydantic_settings.SettingsError``."""
    flags = flag_parser()(args=list(argv))
    if "static_config" in flags():
        # --static-config implies --discovery static; as an init value it ranks below an explicit
        # --discovery and above KD_ROUTER_DISCOVERY, just as a flag would.
        return RouterSettings(_cli_settings_source=flags, discovery="static")
    return RouterSettings(_cli_settings_source=flags)
