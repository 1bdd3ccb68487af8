from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from kubediffusion.api.errors import AuthenticationError
from kubediffusion.router.auth import APIKeys, fingerprint, parse_keys


def test_key_file_lines_comments_and_blanks() -> None:
    assert parse_keys("# team a\nsk-one\n\n  sk-two  \n") == (b"sk-one", b"sk-two")


def test_missing_wrong_and_right_keys() -> None:
    keys = APIKeys(keys=("sk-one", "sk-two"))
    for header in (None, "", "Bearer", "Bearer ", "Basic c2stb25l", "sk-one"):
        with pytest.raises(AuthenticationError) as info:
            keys.authenticate(header)
        assert info.value.code == "missing_api_key"
    with pytest.raises(AuthenticationError) as info:
        keys.authenticate("Bearer sk-three")
    assert info.value.code == "invalid_api_key" and info.value.status_code == 401
    assert keys.authenticate("Bearer sk-two") == fingerprint("sk-two")
    assert keys.authenticate("bearer sk-one") == fingerprint("sk-one")


def test_no_keys_means_auth_off_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        keys = APIKeys(None)
    assert keys.authenticate(None) is None
    assert "authentication is OFF" in caplog.text


def test_rotated_key_file_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-old\n")
    keys = APIKeys(path)
    assert keys.authenticate("Bearer sk-old")
    path.write_text("sk-new\n")
    os.utime(path, (1, 1))  # a different mtime, whatever the filesystem's resolution
    with pytest.raises(AuthenticationError):
        keys.authenticate("Bearer sk-old")
    assert keys.authenticate("Bearer sk-new")


def test_fingerprint_does_not_contain_the_key() -> None:
    assert "sk-secret" not in fingerprint("sk-secret")


async def test_app_requires_a_key_but_health_readyz_metrics_are_open(
    router: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-right\n")
    body = {"prompt": "a cat"}
    with caplog.at_level(logging.DEBUG):
        async with router(api_keys_file=keys) as client:
            for path in ("/health", "/readyz", "/metrics"):
                assert (await client.get(path)).status_code == 200
            missing = await client.post("/v1/images/generations", json=body)
            wrong = await client.post("/v1/images/generations", json=body, headers={"Authorization": "Bearer sk-bad"})
            models = await client.get("/v1/models")
            right = await client.post("/v1/images/generations", json=body, headers={"Authorization": "Bearer sk-right"})
    assert missing.status_code == wrong.status_code == models.status_code == 401
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert "sk-right" not in caplog.text and "sk-bad" not in caplog.text


@pytest.mark.parametrize("content", ["", "# all keys removed\n\n", None], ids=["empty", "comments only", "missing"])
def test_a_configured_key_file_without_keys_refuses_everyone(
    tmp_path: Path, content: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Auth configured (the chart's auth.enabled) but an empty or absent Secret must fail closed, not open."""
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with caplog.at_level(logging.WARNING):
        keys = APIKeys(path)
        for header in (None, "Bearer anything"):
            with pytest.raises(AuthenticationError):
                keys.authenticate(header)
    assert "refused" in caplog.text
    assert caplog.text.count(str(path)) == 1  # said once, not once per request


def test_keys_written_into_an_emptied_file_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("")
    keys = APIKeys(path)
    with pytest.raises(AuthenticationError):
        keys.authenticate("Bearer sk-new")
    path.write_text("sk-new\n")
    assert keys.authenticate("Bearer sk-new")
