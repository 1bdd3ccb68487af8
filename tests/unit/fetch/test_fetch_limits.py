"""Archive limits: sizes as Kubernetes quantities, the byte limit and the expansion ratio, from flags or env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fetch_support import OPT_INS, PIPELINE, M, Server, build, run

from kubediffusion.fetch.limits import RATIO_GRACE_BYTES, Limits, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20Gi", 20 << 30),
        ("1.5Gi", 3 << 29),
        ("500M", 500_000_000),
        ("10k", 10_000),
        ("10Ki", 10_240),
        ("2Ti", 2 << 40),
        ("12345", 12345),
        (" 7 ", 7),
    ],
)
def test_sizes_are_bytes_or_kubernetes_quantities(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "Gi", "-1Gi", "1GB", "1ki", "1 gigabyte", "1e9", "0x10"])
def test_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_quantity(text)


def test_the_ratio_spares_small_archives_and_stops_bombs() -> None:
    limits = Limits(max_ratio=100)
    limits.check_total(RATIO_GRACE_BYTES, 1, max_bytes=1 << 40)  # tiny but compressible: fine
    limits.check_total(100 * (1 << 20), 1 << 20, max_bytes=1 << 40)  # exactly 100x: fine
    with pytest.raises(ValueError, match="decompression bomb"):
        limits.check_total(100 * (1 << 20) + 1, 1 << 20, max_bytes=1 << 40)
    with pytest.raises(ValueError, match="more than the limit of 10"):
        limits.check_total(11, 11, max_bytes=10)


def test_limits_come_from_the_environment_and_flags_win(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(server.root / "m.tar", [PIPELINE, M("unet/w.bin", data=os.urandom(20_000))], "tar")
    monkeypatch.setenv("KD_FETCH_MAX_BYTES", "10Ki")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server.url("m.tar"), *OPT_INS)
    assert code == 2 and "more than the limit of 10240" in summary["error"]
    code, summary = run(tmp_path / "model", tmp_path, "--url", server.url("m.tar"), *OPT_INS, "--max-bytes", "1Mi")
    assert code == 0, summary
    monkeypatch.setenv("KD_FETCH_MAX_MEMBERS", "1")
    code, summary = run(tmp_path / "other", tmp_path, "--url", server.url("m.tar"), *OPT_INS, "--max-bytes", "1Mi")
    assert code == 2 and "more than 1 members" in summary["error"]


def test_the_volume_must_have_room_for_what_the_archive_declares(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    build(server.root / "m.tar", [PIPELINE, M("unet/w.bin", data=os.urandom(20_000))], "tar")
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(*real(path)[:2], 5000))
    code, summary = run(tmp_path / "model", tmp_path, "--url", server.url("m.tar"), *OPT_INS, "--max-bytes", "1Mi")
    assert code == 2 and "the volume has 5000 free" in summary["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["termination-log", "www"]
