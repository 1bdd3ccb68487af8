"""Copies side by side in one cache volume: a new source beside the serving copy, pruning, and no room for two."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fetch_support import FAKE_MODEL, OPT_INS, Server, make_tar, run

from kubediffusion.fetch import copies
from kubediffusion.fetch.main import MARKER


def _copy(path: Path, size: int = 10) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    (path / MARKER).write_text(json.dumps({"source": "x", "bytes": size}))
    return path


def test_a_new_source_downloads_beside_the_kept_copy_which_stays(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "b.tar", FAKE_MODEL)
    serving = _copy(tmp_path / "models" / "aaaa")
    dest = tmp_path / "models" / "bbbb"
    code, summary = run(dest, tmp_path, "--url", server.url("b.tar"), "--prune", "--keep", str(serving), *OPT_INS)
    assert code == 0 and summary["cached"] is False
    assert (dest / MARKER).is_file() and (serving / MARKER).is_file(), "the serving copy is untouched"


def test_prune_removes_other_copies_and_leftovers_but_nothing_else(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "b.tar", FAKE_MODEL)
    models = tmp_path / "models"
    old, kept = _copy(models / "old"), _copy(models / "kept")
    (models / ".old.staging-1234").mkdir()
    (models / ".download-xyz").write_text("partial")
    (models / "lost+found").mkdir()
    (models / "notes.txt").write_text("someone's file")
    (models / "half").mkdir()  # a directory without a marker is not a copy of ours
    dest = models / "new"
    assert run(dest, tmp_path, "--url", server.url("b.tar"), "--prune", "--keep", str(kept), *OPT_INS)[0] == 0
    assert sorted(p.name for p in models.iterdir()) == ["half", "kept", "lost+found", "new", "notes.txt"]
    assert not old.exists()
    # Once the pods left the kept copy, the next run (nothing to download) removes it too.
    requests = len(server.requests)
    code, summary = run(dest, tmp_path, "--url", server.url("b.tar"), "--prune", *OPT_INS)
    assert code == 0 and summary["cached"] is True and len(server.requests) == requests
    assert sorted(p.name for p in models.iterdir()) == ["half", "lost+found", "new", "notes.txt"]


def test_without_room_for_a_second_copy_the_job_fails_permanently_with_the_reason(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tar(server.root / "b.tar", FAKE_MODEL)
    serving = _copy(tmp_path / "models" / "aaaa", size=5_000_000)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(copies.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))
    dest = tmp_path / "models" / "bbbb"
    code, summary = run(dest, tmp_path, "--url", server.url("b.tar"), "--keep", str(serving), *OPT_INS)
    assert code == 2 and summary["reason"] == "CacheTooSmallForSwap"
    assert "spec.cache.size" in summary["error"] and "scaleToZero" in summary["error"]
    assert server.requests == [], "nothing downloaded"
    assert (serving / MARKER).is_file() and not dest.exists()
    # Alone (scaleToZero: the old copy is pruned first) the same volume is enough.
    code, _ = run(dest, tmp_path, "--url", server.url("b.tar"), "--prune", *OPT_INS)
    assert code == 0 and not serving.exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device")], ids=["ENOSPC"])
def test_a_volume_that_fills_up_beside_a_kept_copy_is_too_small_not_a_retry(tmp_path: Path, error: Any) -> None:
    with pytest.raises(copies.CacheTooSmall), copies.side_by_side([tmp_path / "kept"]):
        raise error
    with pytest.raises(OSError), copies.side_by_side([]):  # alone: an ordinary failure
        raise error
    from kubediffusion.fetch.errors import ArchiveError

    def extractor_full() -> None:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as exc:
            raise ArchiveError("the volume is full while writing unet/x") from exc

    with pytest.raises(copies.CacheTooSmall), copies.side_by_side([tmp_path / "kept"]):
        extractor_full()


def test_keep_and_prune_come_from_the_environment_too(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tar(server.root / "b.tar", FAKE_MODEL)
    models = tmp_path / "models"
    old, kept = _copy(models / "old"), _copy(models / "kept")
    monkeypatch.setenv("KD_FETCH_PRUNE", "true")
    monkeypatch.setenv("KD_FETCH_KEEP", str(kept))
    assert run(models / "new", tmp_path, "--url", server.url("b.tar"), *OPT_INS)[0] == 0
    assert kept.exists() and not old.exists()
