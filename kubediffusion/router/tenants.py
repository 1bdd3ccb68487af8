"""Tenants: who a key belongs to, which models it may use, its rate limit, its daily quota.

The tenants file (``--tenants-file`` / ``KD_ROUTER_TENANTS_FILE``, a mounted Secret in a cluster)::

    tenants:
      - name: team-a
        keys: ["plain-key", "sha256:<hex digest of a key>"]  # digests: the Secret need not hold usable keys
        models: ["tiny-sd", "sdxl-*"]                          # names/aliases, glob patterns; absent = all
        rateLimit: {rps: 5, burst: 10}                        # absent = the router's per-key default
        quota: {imagesPerDay: 1000}                            # absent = unlimited
        admin: true                                            # may read GET /v1/usage (default false)

Every key, plain or not, is kept only as its SHA-256 digest: a presented key is hashed once and compared
with :func:`hmac.compare_digest` against every digest (no early exit), and no key or digest is ever
logged. A key listed twice (in one tenant or two, plain or as a digest) makes the file invalid: a key
names exactly one tenant.

A model allowed is allowed with its LoRA adapters (``tiny-sd:style-a`` whenever ``tiny-sd``): patterns
match models' names and aliases, never ``<model>:<adapter>``, so that access is one decision per model
(pods, quota and usage are per model too); a pattern with a ``:`` is logged, as it allows no adapter.

:class:`TenantsFile` re-reads the file when its modification time or size changes (a rotated Secret
takes effect without a restart). A file that cannot be read or is invalid fails closed: it is logged
once, in one line that says where (a YAML line and column, a field path) but never echoes the file's
text, and :attr:`TenantsFile.broken` stays set until a valid file is in place (the app then answers
503, see :mod:`.callers`). A valid file without any key refuses every key (401), as an empty key file does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubediffusion.router.filestamp import FileStamp
from kubediffusion.router.routing import ModelEntry

log = logging.getLogger(__name__)

SHA256_PREFIX = "sha256:"
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # a Prometheus label value and a ConfigMap-friendly key


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


@dataclass(frozen=True)
class RateLimit:
    rps: float
    burst: int | None = None  # None: the router's default burst


@dataclass(frozen=True)
class Tenant:
    """One tenant. ``models`` None = every model; ``images_per_day`` None = no quota; ``rate_limit`` None
    = the router's per-key default. ``bucket`` names its rate-limit bucket (several keys, one bucket)."""

    name: str
    models: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    images_per_day: int | None = None
    admin: bool = False
    bucket: str = ""

    def allows(self, entry: ModelEntry) -> bool:
        """Whether the model (by its name or one of its aliases) matches one of the tenant's patterns."""
        if self.models is None:
            return True
        names = (entry.name, *entry.aliases)
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.models for name in names)

    def allows_name(self, name: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.models)


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class RateLimitSpec(_Spec):
    rps: float = Field(ge=0)  # 0: no per-tenant limit (the router's global limit still holds)
    burst: int | None = Field(default=None, ge=1)


class QuotaSpec(_Spec):
    images_per_day: int = Field(ge=0)


class TenantSpec(_Spec):
    name: str = Field(pattern=TENANT_NAME)
    keys: list[str] = Field(default_factory=list)
    models: list[str] | None = None
    rate_limit: RateLimitSpec | None = None
    quota: QuotaSpec | None = None
    admin: bool = False


class TenantsSpec(_Spec):
    tenants: list[TenantSpec] = Field(default_factory=list)


class InvalidTenantsError(ValueError):
    """What is wrong with a tenants file, worded without any of its text (it holds keys)."""


@dataclass(frozen=True)
class TenantBook:
    """A parsed tenants file: each key's digest with the tenant it names."""

    tenants: tuple[Tenant, ...] = ()
    keys: tuple[tuple[bytes, Tenant], ...] = ()


def parse_tenants(text: str) -> TenantBook:
    """The tenants file's text -> a :class:`TenantBook`; :class:`InvalidTenantsError` says where it is wrong."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidTenantsError(f"not valid YAML{where}") from None
    if data is None:
        data = {}
    try:
        spec = TenantsSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidTenantsError(describe(exc)) from None
    tenants: list[Tenant] = []
    keys: list[tuple[bytes, Tenant]] = []
    owners: dict[bytes, str] = {}
    for index, item in enumerate(spec.tenants):
        if any(t.name == item.name for t in tenants):
            raise InvalidTenantsError(f"tenants.{index}.name: the tenant name {item.name!r} is used twice")
        limit = item.rate_limit
        tenant = Tenant(
            name=item.name,
            models=tuple(item.models) if item.models is not None else None,
            rate_limit=RateLimit(limit.rps, limit.burst) if limit is not None else None,
            images_per_day=item.quota.images_per_day if item.quota is not None else None,
            admin=item.admin,
            bucket=f"tenant:{item.name}",
        )
        tenants.append(tenant)
        for position, pattern in enumerate(item.models or ()):
            if ":" in pattern:  # most likely meant for an adapter, which comes with its model instead
                log.warning("tenants.%d.models.%d: a pattern with ':' matches no model's adapter", index, position)
        for position, key in enumerate(item.keys):
            where = f"tenants.{index}.keys.{position}"
            key_digest = key_entry_digest(key, where)
            if key_digest in owners:
                raise InvalidTenantsError(f"{where}: this key is listed twice (also in tenant {owners[key_digest]!r})")
            owners[key_digest] = item.name
            keys.append((key_digest, tenant))
    return TenantBook(tuple(tenants), tuple(keys))


def key_entry_digest(entry: str, where: str) -> bytes:
    if not entry.strip():
        raise InvalidTenantsError(f"{where}: an empty key")
    if entry.startswith(SHA256_PREFIX):
        hexdigest = entry.removeprefix(SHA256_PREFIX)
        if not HEX_DIGEST.fullmatch(hexdigest):
            raise InvalidTenantsError(f"{where}: '{SHA256_PREFIX}' must be followed by 64 hexadecimal digits")
        return bytes.fromhex(hexdigest)
    if entry != entry.strip():
        raise InvalidTenantsError(f"{where}: a key with spaces around it (a Bearer token never has them)")
    return digest(entry)


def describe(exc: ValidationError) -> str:
    """pydantic's errors as ``path: message``, never with the input (it may be a key)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(part) for part in error["loc"]) or "file"
        parts.append(f"{path}: {error['msg']}")
    return "; ".join(parts)


class TenantsFile:
    """The tenants file, re-read when it changes (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = FileStamp(path)
        self.book = TenantBook()
        self.broken: str | None = None  # why the file cannot be used; None when it can
        self.reload()

    def reload(self) -> None:
        if not self._file.changed():
            return
        try:
            if not self._file.exists:
                raise InvalidTenantsError("the file is missing")
            try:
                text = self.path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidTenantsError(f"the file cannot be read ({type(exc).__name__})") from None
            self.book, self.broken = parse_tenants(text), None
        except InvalidTenantsError as exc:
            self.book, self.broken = TenantBook(), str(exc)
            log.error(
                "tenants file %s is not usable: %s; every API request is refused (503) until it is fixed",
                self.path,
                exc,
            )
            return
        log.info(
            "loaded %d tenant(s) with %d key(s) from %s%s",
            len(self.book.tenants),
            len(self.book.keys),
            self.path,
            "" if self.book.keys else ": no keys, every API request is refused (401)",
        )


def file_problem(path: Path) -> str | None:
    """What is wrong with the tenants file at ``path`` (never its text), None when it is usable: for the
    commands, which refuse to start with a broken one rather than answer every request 503."""
    try:
        parse_tenants(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return f"tenants file {path}: cannot be read ({type(exc).__name__})"
    except InvalidTenantsError as exc:
        return f"tenants file {path}: {exc}"
    return None
