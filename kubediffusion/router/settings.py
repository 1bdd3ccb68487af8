"""Router settings: one pydantic-settings class, environment prefix ``KD_ROUTER_``.

Every field is also reachable as an environment variable, e.g. ``KD_ROUTER_PORT=9000`` or
``KD_ROUTER_CORS_ORIGINS='["https://app.example"]'``. Secrets (API keys, the URL signing key) are read
from files so that a Kubernetes Secret can be mounted, never from the command line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_ROUTER_", extra="ignore")

    host: str = "0.0.0.0"  # a router in a pod listens on all interfaces
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"

    # Discovery
    discovery: Literal["kubernetes", "static"] = "kubernetes"
    static_config: Path | None = None  # YAML list of models, for discovery=static
    namespace: str = ""  # empty = watch all namespaces
    kubeconfig: Path | None = None  # empty = in-cluster config, else this file
    watch_timeout_seconds: int = Field(default=30, ge=1)  # server-side watch timeout before a re-watch

    # Auth, limits, CORS
    api_keys_file: Path | None = None  # one key per line; unset = auth off; set but empty/missing = all refused
    rate_limit_rps: float = Field(default=10.0, ge=0)  # per API key (or client IP); 0 = off
    rate_limit_burst: int = Field(default=25, ge=1)
    global_rate_limit_rps: float = Field(default=200.0, ge=0)  # whole router; 0 = off
    global_rate_limit_burst: int = Field(default=400, ge=1)
    cors_origins: list[str] = Field(default_factory=list)  # empty = no CORS headers
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # url responses
    storage_dir: Path = Path("/var/lib/kubediffusion/images")
    public_base_url: str = ""  # empty = derived from each request's Host
    signing_key: SecretStr | None = None  # prefer signing_key_file
    signing_key_file: Path | None = None  # no key at all = a random one per process (warned)
    url_ttl_seconds: int = Field(default=3600, ge=1)
    default_response_format: Literal["url", "b64_json"] = "b64_json"

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


@lru_cache(maxsize=1)
def get_settings() -> RouterSettings:
    return RouterSettings()
