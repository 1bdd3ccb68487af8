"""Signed, expiring links to stored images: ``/v1/images/files/{id}?expires=<unix>&sig=<hex>``.

``sig = HMAC-SHA256(key, "{id}.{expires}")`` in hex. Verification checks the id's shape first (random
hex only, so an id can never be a path), then the signature in constant time, then the expiry, so
a tampered link never learns whether it would have expired.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

from kubediffusion.api.errors import NotFoundError
from kubediffusion.router.errors import ExpiredURLError, InvalidSignatureError

ID_BYTES = 16
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
EXPIRES_PATTERN = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() also accepts "²", which int() refuses
FILES_PATH = "/v1/images/files/"


def new_image_id() -> str:
    return secrets.token_hex(ID_BYTES)


def is_valid_id(image_id: str) -> bool:
    return ID_PATTERN.fullmatch(image_id) is not None


class URLSigner:
    def __init__(self, key: bytes, *, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the URL signing key must be at least 16 bytes")
        self._key = key
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{image_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, image_id: str) -> tuple[int, str]:
        expires = int(self._clock()) + self.ttl_seconds
        return expires, self.signature(image_id, expires)

    def url(self, base_url: str, image_id: str) -> str:
        expires, sig = self.sign(image_id)
        return f"{base_url.rstrip('/')}{FILES_PATH}{image_id}?{urlencode({'expires': expires, 'sig': sig})}"

    def verify(self, image_id: str, expires: str | None, sig: str | None) -> None:
        """Raise NotFoundError (bad id), InvalidSignatureError or ExpiredURLError; return if valid."""
        if not is_valid_id(image_id):
            raise NotFoundError("No such image.", code="image_not_found")
        if not expires or not sig or EXPIRES_PATTERN.fullmatch(expires) is None:
            raise InvalidSignatureError("This image link is not signed correctly.")
        expected = self.signature(image_id, int(expires))
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise InvalidSignatureError("This image link is not signed correctly.")
        if int(expires) < self._clock():
            raise ExpiredURLError("This image link has expired. Generate the image again.")
