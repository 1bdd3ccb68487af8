"""The tenants file: its shape, keys plain or as SHA-256 digests (neither ever logged), reloads, and a
broken file failing closed (503 for every API request, one log line that never quotes the file)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubediffusion.router.auth import ANONYMOUS, APIKeys, Authenticator, fingerprint
from kubediffusion.router.tenants import InvalidTenantsError, TenantsFile, parse_tenants
from tests.unit.router.tenancy import (
    A_DIGEST,
    A_HASHED_KEY,
    A_KEY,
    ADMIN_KEY,
    B_KEY,
    MODELS,
    SDXL,
    TENANTS,
    TINY,
    bearer,
    tenants_file,
    write_file,
)

GENERATE = {"prompt": "a lighthouse", "model": "tiny-sd"}


def test_the_issue_example_parses_with_its_defaults() -> None:
    book = parse_tenants(TENANTS)
    a, b, ops = book.tenants
    assert (a.name, a.models, a.images_per_day, a.rate_limit, a.admin) == ("team-a", ("tiny-*",), 2, None, False)
    assert b.rate_limit is not None and (b.rate_limit.rps, b.rate_limit.burst) == (1, 2) and b.images_per_day is None
    assert ops.models is None and ops.admin  # models absent = every model
    assert [tenant.name for _, tenant in book.keys] == ["team-a", "team-a", "team-b", "ops"]
    assert book.keys[1][0] == bytes.fromhex(A_DIGEST)  # a digest entry is kept as given


def test_globs_match_names_and_aliases() -> None:
    a = parse_tenants(TENANTS).tenants[0]
    assert a.allows(TINY) and not a.allows(SDXL)
    by_alias = parse_tenants('tenants: [{name: x, models: ["dall-e-?"]}]').tenants[0]
    assert by_alias.allows(TINY) and not by_alias.allows(SDXL)
    nothing = parse_tenants("tenants: [{name: x, models: []}]").tenants[0]
    assert not nothing.allows(TINY)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "tenants: [{name: a, keys: [k1]}, {name: a, keys: [k2]}]",
            "tenants.1.name: the tenant name 'a' is used twice",
        ),
        ("tenants: [{name: a, keys: [k1]}, {name: b, keys: [k1]}]", "tenants.1.keys.0: this key is listed twice"),
        (
            f"tenants: [{{name: a, keys: [{A_HASHED_KEY}]}}, {{name: b, keys: ['sha256:{A_DIGEST}']}}]",
            "tenants.1.keys.0: this key is listed twice (also in tenant 'a')",
        ),
        ("tenants: [{name: a, keys: ['sha256:abc']}]", "must be followed by 64 hexadecimal digits"),
        ("tenants: [{name: a, keys: [k1], quota: {imagesPerDay: -1}}]", "tenants.0.quota.imagesPerDay"),
        ("tenants: [{name: a, keys: [k1], rateLimit: {rps: 1, brust: 2}}]", "tenants.0.rateLimit.brust"),
        ("tenants: [{name: 'a b', keys: [k1]}]", "tenants.0.name"),
        ("tenants: [{name: a, keys: [k1]}\n  - oops", "not valid YAML at line 2"),
        ("- just a list", "file: Input should be"),
    ],
)
def test_invalid_files_say_where_without_quoting_keys(text: str, says: str) -> None:
    with pytest.raises(InvalidTenantsError) as info:
        parse_tenants(text)
    assert says in str(info.value)
    assert "k1" not in str(info.value) and A_HASHED_KEY not in str(info.value) and A_DIGEST not in str(info.value)


def test_a_key_with_spaces_around_it_is_refused_rather_than_never_matching() -> None:
    with pytest.raises(InvalidTenantsError, match="spaces"):
        parse_tenants("tenants: [{name: a, keys: [' sk-x']}]")


def authenticator(tmp_path: Path, text: str = TENANTS, keys_file: Path | None = None) -> Authenticator:
    return Authenticator(APIKeys(keys_file), TenantsFile(tenants_file(tmp_path, text)))


def test_plain_and_hashed_keys_name_their_tenant_and_the_key_file_keeps_working(tmp_path: Path) -> None:
    keys = write_file(tmp_path / "keys", "sk-legacy\n")
    auth = authenticator(tmp_path, keys_file=keys)
    plain, hashed = auth.authenticate(f"Bearer {A_KEY}"), auth.authenticate(f"Bearer {A_HASHED_KEY}")
    assert plain.tenant.name == hashed.tenant.name == "team-a"
    assert plain.key == fingerprint(A_KEY) and hashed.key == fingerprint(A_HASHED_KEY)  # owners of stored images
    legacy = auth.authenticate("Bearer sk-legacy")  # one anonymous tenant per key of the key file
    assert legacy.tenant.name == fingerprint("sk-legacy") and legacy.tenant.models is None
    assert legacy.bucket("10.0.0.1") == fingerprint("sk-legacy") and plain.bucket("10.0.0.1") == "tenant:team-a"
    assert Authenticator(APIKeys(None)).authenticate(None).tenant is ANONYMOUS  # auth off


async def test_a_sha256_key_works_end_to_end_and_neither_it_nor_its_digest_is_logged(
    router: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with router(MODELS, tenants_file=tenants_file(tmp_path)) as client:
            answer = await client.post("/v1/images/generations", json=GENERATE, headers=bearer(A_HASHED_KEY))
            wrong = await client.post("/v1/images/generations", json=GENERATE, headers=bearer(A_DIGEST))
            models = await client.get("/v1/models", headers=bearer(A_HASHED_KEY))
    assert answer.status_code == 200 and models.status_code == 200
    assert wrong.status_code == 401  # the digest itself is no key
    assert A_HASHED_KEY not in caplog.text and A_DIGEST not in caplog.text
    assert A_KEY not in caplog.text and B_KEY not in caplog.text


async def test_an_edited_file_is_reloaded_without_a_restart(router: Any, tmp_path: Path) -> None:
    path = tenants_file(tmp_path)
    async with router(MODELS, tenants_file=path) as client:
        before = await client.post("/v1/images/generations", json=GENERATE, headers=bearer(B_KEY))
        write_file(path, TENANTS.replace('models: ["sdxl-*"]', 'models: ["*"]'), stamp=2)
        after = await client.post("/v1/images/generations", json=GENERATE, headers=bearer(B_KEY))
        write_file(path, TENANTS.replace(B_KEY, "sk-team-b-rotated"), stamp=3)
        rotated_old = await client.get("/v1/models", headers=bearer(B_KEY))
        rotated_new = await client.get("/v1/models", headers=bearer("sk-team-b-rotated"))
    assert before.status_code == 404 and after.status_code == 200
    assert rotated_old.status_code == 401 and rotated_new.status_code == 200


async def test_a_broken_file_fails_closed_with_503_and_one_log_line_until_fixed(
    router: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tenants_file(tmp_path)
    broken = TENANTS.replace("quota: {imagesPerDay: 2}", "quota: {imagesPerDay: many}")
    async with router(MODELS, tenants_file=path) as client:
        with caplog.at_level(logging.INFO):
            write_file(path, broken, stamp=2)
            answers = [
                await client.post("/v1/images/generations", json=GENERATE, headers=bearer(A_KEY)) for _ in range(3)
            ]
            listing = await client.get("/v1/models", headers=bearer(ADMIN_KEY))
            anonymous = await client.get("/v1/models")
            health = await client.get("/health")
            write_file(path, TENANTS, stamp=3)
            fixed = await client.post("/v1/images/generations", json=GENERATE, headers=bearer(A_KEY))
    assert {a.status_code for a in answers} == {listing.status_code, anonymous.status_code} == {503}
    error = answers[0].json()["error"]
    assert error["code"] == "tenants_unavailable" and error["type"] == "server_error"
    assert answers[0].headers["retry-after"] == "30"
    assert health.status_code == 200 and fixed.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "not usable" in r.getMessage()]
    assert len(lines) == 1 and "tenants.0.quota.imagesPerDay" in lines[0] and "503" in lines[0]
    assert "many" not in caplog.text and A_KEY not in caplog.text


async def test_a_missing_file_fails_closed_and_a_file_without_keys_refuses_every_key(
    router: Any, tmp_path: Path
) -> None:
    async with router(MODELS, tenants_file=tmp_path / "absent.yaml") as client:
        missing = await client.get("/v1/models", headers=bearer(A_KEY))
    async with router(MODELS, tenants_file=tenants_file(tmp_path, "tenants: []\n")) as client:
        empty = await client.get("/v1/models", headers=bearer(A_KEY))
    assert missing.status_code == 503 and empty.status_code == 401


def test_the_router_command_refuses_to_start_with_a_broken_file(tmp_path: Path) -> None:
    path = tenants_file(tmp_path, f"tenants: [{{name: a, keys: ['{A_KEY}', '{A_KEY}']}}]")
    config = write_file(tmp_path / "models.yaml", "[{name: tiny-sd, endpoints: ['http://127.0.0.1:9']}]")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubediffusion.cli",
            "router",
            "--static-config",
            str(config),
            "--tenants-file",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{name: value for name, value in os.environ.items() if not name.startswith("KD_ROUTER_")},
            "KD_ROUTER_STORAGE_DIR": str(tmp_path / "images"),
        },
    )
    assert result.returncode == 2, result.stderr
    assert "tenants.0.keys.1: this key is listed twice" in result.stderr and "Traceback" not in result.stderr
    assert A_KEY not in result.stderr
    assert hashlib.sha256(A_KEY.encode()).hexdigest() not in result.stderr
