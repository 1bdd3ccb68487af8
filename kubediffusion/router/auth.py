"""API keys: ``Authorization: Bearer <key>`` checked against a file of keys (one per line).

The file is usually a mounted Secret; it is re-read when its modification time changes, so a
rotated Secret takes effect without a restart. Blank lines and ``#`` comments are ignored. With no
file, or no keys in it, authentication is off (a warning is logged once).

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
        self._mtime: float | None = None
        self._keys: tuple[bytes, ...] = tuple(k.encode() for k in keys) if keys is not None else ()
        self._warned = False
        self.reload()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def reload(self) -> None:
        if self._path is None:
            self._warn_if_off()
            return
        try:
            mtime = self._path.stat().st_mtime
        except FileNotFoundError:
            log.warning("API keys file %s does not exist", self._path)
            self._keys, self._mtime = (), None
            self._warn_if_off()
            return
        if mtime != self._mtime:
            self._keys, self._mtime = parse_keys(self._path.read_text()), mtime
            log.info("loaded %d API key(s) from %s", len(self._keys), self._path)
            self._warn_if_off()

    def _warn_if_off(self) -> None:
        if not self._keys and not self._warned:
            log.warning("no API keys configured: authentication is OFF")
            self._warned = True

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's identity (a key fingerprint), None when auth is off; AuthenticationError otherwise."""
        self.reload()
        if not self._keys:
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
