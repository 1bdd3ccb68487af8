"""API keys: ``Authorization: Bearer <key>`` checked against a file of keys (one per line).

The file is usually a mounted Secret; it is re-read when its modification time or size changes, so
a rotated Secret takes effect without a restart. Blank lines and ``#`` comments are ignored. With no
file configured, authentication is off (a warning is logged once). A configured file that is missing
or holds no keys fails closed: every request is refused (401) until keys appear, never served openly.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit)
and never logged; requests are identified by a short SHA-256 fingerprint of the key instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from kubediffusion.api.errors import AuthenticationError

log = logging.getLogger(__name__)


def fingerprint(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_keys(text: str) -> tuple[bytes, ...]:
    keys = (line.strip() for line in text.splitlines())
    return tuple(key.encode() for key in keys if key and not key.startswith("#"))


class APIKeys:
    def __init__(self, path: Path | None = None, *, keys: tuple[str, ...] | None = None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._read_once = False
        self._keys: tuple[bytes, ...] = tuple(k.encode() for k in keys) if keys is not None else ()
        self._warned = False
        self.reload()

    @property
    def enabled(self) -> bool:
        return self._path is not None or bool(self._keys)

    def reload(self) -> None:
        if self._path is None:
            self._warn_if_off()
            return
        try:
            stat = self._path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._read_once and stamp == self._stamp:
            return
        self._read_once, self._stamp = True, stamp
        try:
            self._keys = parse_keys(self._path.read_text()) if stamp is not None else ()
        except (OSError, UnicodeDecodeError):  # removed between stat and read, unreadable: fail closed
            self._keys = ()
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
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise AuthenticationError(
                "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
                "(Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        candidate = presented.encode("utf-8", "replace")
        matched = False
        for key in self._keys:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationError("Incorrect API key provided.")
        return fingerprint(presented)
