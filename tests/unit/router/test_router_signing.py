from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from kubediffusion.api.errors import NotFoundError
from kubediffusion.router.errors import ExpiredURLError, InvalidSignatureError
from kubediffusion.router.signing import URLSigner, new_image_id

KEY = b"k" * 32


def signer(now: float = 1_000_000.0) -> URLSigner:
    return URLSigner(KEY, ttl_seconds=60, clock=lambda: now)


def test_a_signed_link_verifies() -> None:
    image_id = new_image_id()
    url = signer().url("https://images.example.com/", image_id)
    parts = urlsplit(url)
    assert url.startswith(f"https://images.example.com/v1/images/files/{image_id}?")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert int(query["expires"]) == 1_000_060
    signer().verify(image_id, query["expires"], query["sig"])


@pytest.mark.parametrize("tamper", ["sig", "expires", "id", "key"])
def test_tampered_links_are_rejected(tamper: str) -> None:
    image_id = new_image_id()
    expires, sig = signer().sign(image_id)
    if tamper == "sig":
        sig = ("0" if sig[0] != "0" else "1") + sig[1:]
    elif tamper == "expires":
        expires += 3600
    elif tamper == "id":
        image_id = new_image_id()
    verifier = URLSigner(b"x" * 32, ttl_seconds=60) if tamper == "key" else signer()
    with pytest.raises(InvalidSignatureError):
        verifier.verify(image_id, str(expires), sig)


@pytest.mark.parametrize(
    ("expires", "sig"),
    [(None, "ab"), ("123", None), ("", ""), ("-5", "ab"), ("1e9", "ab"), ("9" * 40, "ab"), ("100", "é")],
)
def test_missing_or_malformed_parameters_are_rejected(expires: str | None, sig: str | None) -> None:
    with pytest.raises(InvalidSignatureError):
        signer().verify(new_image_id(), expires, sig)


def test_an_expired_link_is_rejected_even_when_signed_correctly() -> None:
    image_id = new_image_id()
    expires, sig = signer(now=1_000_000).sign(image_id)
    signer(now=1_000_060).verify(image_id, str(expires), sig)  # the last valid second
    with pytest.raises(ExpiredURLError):
        signer(now=1_000_061).verify(image_id, str(expires), sig)


@pytest.mark.parametrize(
    "image_id",
    [
        "../../etc/passwd",
        "..",
        "a" * 31,
        "a" * 33,
        "A" * 32,
        "g" * 32,
        "0123456789abcdef0123456789abcde/",
        "%2e%2e",
        "",
        "0" * 32 + ".png",
    ],
)
def test_ids_that_are_not_random_hex_are_not_found(image_id: str) -> None:
    s = signer()
    with pytest.raises(NotFoundError):
        s.verify(image_id, "2000000", s.signature(image_id, 2_000_000))


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        URLSigner(b"short", ttl_seconds=1)


@pytest.mark.parametrize("expires", ["\u00b2", "\u0663" * 10, "\uff11\uff12\uff13"])  # superscript, Arabic, fullwidth
def test_non_ascii_digits_in_expires_are_a_bad_signature_not_a_crash(expires: str) -> None:
    """str.isdigit() accepts these, int() refuses some of them: a 403, never a 500."""
    with pytest.raises(InvalidSignatureError):
        signer().verify(new_image_id(), expires, "0" * 64)
