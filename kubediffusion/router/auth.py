"""API keys: ``Authorization: Bearer <key>`` checked against a file of keys (one per line) and the tenants
file (:mod:`.tenants`), and the :class:`Caller` a key makes.

The file is usually a mounted Secret; it is re-read when its modification time or size changes, so
a rotated Secret takes effect without a restart. Blank lines and ``#`` comments are ignored. With no
file configured, authentication is off (a warning is logged once). A configured file that is missing
or holds no keys fails closed: every request is refused (401) until keys appear, never served openly.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit)
and never logged; requests are identified by a short SHA-256 fingerprint of the key instead.

:class:`Authenticator` is what the app asks: it hashes the presented key once and compares the digest
with every key of both files (a key of the tenants file wins over the same key in the key file). A key
of the key file is an anonymous tenant of its own (all models, the default rate limit, no quota), named
by its fingerprint. While the tenants file is broken every API request is a 503 ``tenants_unavailable``
with Retry-After, not a 401: the router cannot tell who is who, the client's key is not wrong (a 401 would
send people rotating keys that are fine), and a retry costs nothing (no key is compared, no pod reached).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from kubediffusion.api.errors import AuthenticationError
from kubediffusion.router.errors import TenantsUnavailableError
from kubediffusion.router.filestamp import FileStamp
from kubediffusion.router.tenants import Tenant, TenantsFile, digest

log = logging.getLogger(__name__)

ANONYMOUS = Tenant(name="anonymous")  # every caller while authentication is off
BROKEN_RETRY_AFTER = 30


def fingerprint(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def digest_fingerprint(key_digest: bytes) -> str:
    """The same fingerprint as :func:`fingerprint`, from the key's SHA-256 digest."""
    return "key:" + key_digest.hex()[:12]


def missing_key() -> AuthenticationError:
    return AuthenticationError(
        "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
        "(Authorization: Bearer YOUR_KEY).",
        code="missing_api_key",
    )


def bearer(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer`` header; a 401 ``missing_api_key`` without one."""
    scheme, _, presented = (authorization or "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise missing_key()
    return presented


def anonymous_tenants(keys: tuple[bytes, ...]) -> tuple[tuple[bytes, Tenant], ...]:
    """Each key of the key file as its digest, with a tenant of its own named by its fingerprint."""
    digests = (hashlib.sha256(key).digest() for key in keys)
    return tuple((key_digest, Tenant(name=digest_fingerprint(key_digest))) for key_digest in digests)


def parse_keys(text: str) -> tuple[bytes, ...]:
    keys = (line.strip() for line in text.splitlines())
    return tuple(key.encode() for key in keys if key and not key.startswith("#"))


class APIKeys:
    def __init__(
        self, path: Path | None = None, *, keys: tuple[str, ...] | None = None, warn_if_off: bool = True
    ) -> None:
        self._path = path
        self._file = FileStamp(path) if path is not None else None
        self._keys: tuple[bytes, ...] = tuple(k.encode() for k in keys) if keys is not None else ()
        self.entries = anonymous_tenants(self._keys)
        self._warned = not warn_if_off  # a tenants file is on: auth is not off for want of this file
        self.reload()

    @property
    def enabled(self) -> bool:
        return self._path is not None or bool(self._keys)

    def reload(self) -> None:
        if self._file is None:
            self._warn_if_off()
            return
        if not self._file.changed():
            return
        try:
            self._keys = parse_keys(self._file.path.read_text()) if self._file.exists else ()
        except (OSError, UnicodeDecodeError):  # removed between stat and read, unreadable: fail closed
            self._keys = ()
        self.entries = anonymous_tenants(self._keys)
        if self._keys:
            log.info("loaded %d API key(s) from %s", len(self._keys), self._path)
        else:
            log.error("API keys file %s is missing or holds no keys: every API request is refused", self._path)

    def _warn_if_off(self) -> None:
        if not self._keys and not self._warned:
            log.warning("no API keys configured: authentication is OFF")
            self._warned = True

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's identity (a key fingerprint), None when auth is off; AuthenticationError otherwise."""
        self.reload()
        if not self.enabled:
            return None
        presented = bearer(authorization)
        candidate = presented.encode("utf-8", "replace")
        matched = False
        for key in self._keys:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationError("Incorrect API key provided.")
        return fingerprint(presented)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its tenant (who pays, what it may use) and its key's fingerprint (None while
    authentication is off), which owns the images it stores."""

    tenant: Tenant
    key: str | None = None

    def bucket(self, address: str) -> str:
        """Its rate-limit bucket: the tenant's, else the key's, else (auth off) the client address's."""
        return self.tenant.bucket or self.key or f"ip:{address}"


class Authenticator:
    """The key file and the tenants file together (see the module docstring)."""

    def __init__(self, keys: APIKeys, tenants: TenantsFile | None = None) -> None:
        self.keys = keys
        self.tenants = tenants
        self._sources: tuple[object, object] = (None, None)  # what _entries was built from
        self._entries: tuple[tuple[bytes, Tenant], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.keys.enabled or self.tenants is not None

    def _reload(self) -> tuple[tuple[bytes, Tenant], ...]:
        self.keys.reload()
        if self.tenants is not None:
            self.tenants.reload()
        book = self.tenants.book if self.tenants is not None else None
        old_book, old_keys = self._sources
        if old_book is not book or old_keys is not self.keys.entries:  # rebuilt only when a file was read again
            self._sources = (book, self.keys.entries)
            self._entries = (book.keys if book is not None else ()) + self.keys.entries
        return self._entries

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller; AuthenticationError (401) for a missing or wrong key, TenantsUnavailableError (503)
        while the tenants file is broken."""
        entries = self._reload()
        if not self.enabled:
            return Caller(ANONYMOUS)
        if self.tenants is not None and self.tenants.broken is not None:
            raise TenantsUnavailableError(
                "The router cannot check API keys right now (its tenants configuration is invalid). "
                "Please try again later.",
                retry_after=BROKEN_RETRY_AFTER,
            )
        presented = digest(bearer(authorization))
        matched: Tenant | None = None
        for key_digest, tenant in entries:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, key_digest) and matched is None:
                matched = tenant
        if matched is None:
            raise AuthenticationError("Incorrect API key provided.")
        return Caller(matched, digest_fingerprint(presented))
