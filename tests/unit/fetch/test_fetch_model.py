"""``kubediffusion fetch-model`` end to end against a local HTTP server on 127.0.0.1 (no cluster).

The server is plain http on loopback, which the download policy refuses by default: every run here
passes the opt-ins (``OPT_INS``) explicitly; tests/unit/fetch/test_fetch_download_policy.py checks the refusals.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from fetch_support import FAKE_MODEL, OPT_INS, Server, make_tar, run

from kubediffusion.fetch.archive import UnsafeArchiveError, extract
from kubediffusion.fetch.main import MARKER, main


def test_http_tarball_is_extracted_with_a_marker_and_summary(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "model.tar.gz", FAKE_MODEL, prefix="sd-fake/")  # one top-level dir is unwrapped
    dest = tmp_path / "models" / "model"
    code, summary = run(dest, tmp_path, "--url", server.url("model.tar.gz"), *OPT_INS)
    assert code == 0
    assert (dest / "model_index.json").read_text() == FAKE_MODEL["model_index.json"]
    assert (dest / "unet" / "config.json").exists()
    marker = json.loads((dest / MARKER).read_text())
    assert marker["source"] == f"url:{server.url('model.tar.gz')}"
    assert marker["revision"].startswith("sha256:") and marker["bytes"] >= 1000 and marker["completedAt"]
    assert summary["revision"] == marker["revision"] and summary["bytes"] == marker["bytes"]
    assert summary["cached"] is False
    leftovers = [p.name for p in dest.parent.iterdir() if p.name != "model"]
    assert leftovers == [], "staging and download files are cleaned up"


def test_rerun_with_the_same_source_does_nothing(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "model.tgz", FAKE_MODEL)
    dest = tmp_path / "model"
    assert run(dest, tmp_path, "--url", server.url("model.tgz"), *OPT_INS)[0] == 0
    requests_before = len(server.requests)
    code, summary = run(dest, tmp_path, "--url", server.url("model.tgz"), *OPT_INS)
    assert code == 0 and summary["cached"] is True
    assert len(server.requests) == requests_before, "no second download"


def test_a_new_source_replaces_the_cache(server: Server, tmp_path: Path) -> None:
    make_tar(server.root / "a.tar", FAKE_MODEL)
    make_tar(server.root / "b.tar", {"model_index.json": '{"v": 2}'})
    dest = tmp_path / "model"
    assert run(dest, tmp_path, "--url", server.url("a.tar"), *OPT_INS)[0] == 0
    assert run(dest, tmp_path, "--url", server.url("b.tar"), *OPT_INS)[0] == 0
    assert (dest / "model_index.json").read_text() == '{"v": 2}'
    assert not (dest / "unet").exists()


def test_zip_archive(server: Server, tmp_path: Path) -> None:
    with zipfile.ZipFile(server.root / "model.zip", "w") as archive:
        for name, content in FAKE_MODEL.items():
            archive.writestr(name, content)
    dest = tmp_path / "model"
    assert run(dest, tmp_path, "--url", server.url("model.zip"), *OPT_INS)[0] == 0
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size == 1000


def test_404_fails_with_a_clear_message_and_nonzero_exit(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    code, summary = run(dest, tmp_path, "--url", server.url("missing.tar.gz"), *OPT_INS)
    assert code == 2, "permanent: the Job's podFailurePolicy fails at once"
    assert "HTTP 404" in summary["error"] and "missing.tar.gz" in summary["error"]
    assert not dest.exists()
    assert list(tmp_path.glob(".model.staging-*")) == []


def test_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    code, summary = run(tmp_path / "model", tmp_path, "--url", "http://127.0.0.1:9/model.tar.gz", *OPT_INS)
    assert code == 1 and "ConnectError" in summary["error"], "transient: worth a retry"


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("model_index.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        if kind == "traversal":
            evil = tarfile.TarInfo("../../evil.txt")
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        elif kind == "absolute":
            evil = tarfile.TarInfo("/tmp/evil.txt")
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
        elif kind == "symlink":
            link = tarfile.TarInfo("unet")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../etc"
            tar.addfile(link)
        elif kind == "hardlink":
            link = tarfile.TarInfo("passwd")
            link.type = tarfile.LNKTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
        elif kind == "device":
            dev = tarfile.TarInfo("null")
            dev.type = tarfile.CHRTYPE
            tar.addfile(dev)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("traversal", "path traversal"),
        ("absolute", "absolute path"),
        ("symlink", "links outside"),
        ("hardlink", "absolute path"),
        ("device", "not a regular file"),
    ],
)
def test_unsafe_tarball_is_rejected_and_nothing_escapes(server: Server, tmp_path: Path, kind: str, words: str) -> None:
    _evil_tar(server.root / "evil.tar", kind)
    dest = tmp_path / "a" / "b" / "model"
    code, summary = run(dest, tmp_path, "--url", server.url("evil.tar"), *OPT_INS)
    assert code == 2
    assert words in summary["error"]
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()


def test_zip_traversal_is_rejected(server: Server, tmp_path: Path) -> None:
    with zipfile.ZipFile(server.root / "evil.zip", "w") as archive:
        archive.writestr("../evil.txt", "evil")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server.url("evil.zip"), *OPT_INS)
    assert code != 0 and "path traversal" in summary["error"]


def test_safe_relative_symlink_inside_the_archive_is_allowed(tmp_path: Path) -> None:
    def tar_with_link(path: Path, link: str) -> Path:
        with tarfile.open(path, "w") as tar:
            for name, data in (("model_index.json", b"{}"), ("shared/weights.bin", b"w" * 10)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("unet/weights.bin")
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
        return path

    good = tmp_path / "good"
    good.mkdir()
    extract(tar_with_link(tmp_path / "ok.tar", "../shared/weights.bin"), good, name="ok.tar")
    assert (good / "unet" / "weights.bin").is_symlink()
    assert (good / "unet" / "weights.bin").read_bytes() == b"w" * 10
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(UnsafeArchiveError, match="links outside"):
        extract(tar_with_link(tmp_path / "bad.tar", "../../outside"), bad, name="bad.tar")
    assert list(bad.iterdir()) == [], "nothing is written when the plan is refused"


def test_not_an_archive_url_is_refused(server: Server, tmp_path: Path) -> None:
    (server.root / "model.bin").write_bytes(b"not an archive")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server.url("model.bin"), *OPT_INS)
    assert code == 2 and "not a .tar.gz" in summary["error"]
    assert server.requests == ["/model.bin"] and not (tmp_path / "model").exists()


def test_tiny_model_over_http_then_idempotent(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from kubediffusion.tinymodel import write_tiny_pipeline

    source_dir = tmp_path / "tiny-src"
    write_tiny_pipeline(source_dir, kind="sd")
    with tarfile.open(server.root / "tiny.tar.gz", "w:gz") as tar:
        tar.add(source_dir, arcname="tiny")
    dest = tmp_path / "model"
    code, summary = run(dest, tmp_path, "--url", server.url("tiny.tar.gz"), *OPT_INS)
    assert code == 0 and summary["bytes"] > 0
    assert (dest / "model_index.json").exists() and (dest / "unet").is_dir()


def test_tiny_source_writes_the_smoke_test_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    dest = tmp_path / "model"
    code, summary = run(dest, tmp_path, "--tiny", "sd")
    assert code == 0
    assert (dest / "model_index.json").exists()
    assert summary["source"] == "tiny:sd" and summary["revision"] == "tiny-sd"
    code, summary = run(dest, tmp_path, "--tiny", "sd")
    assert code == 0 and summary["cached"] is True


def test_leftovers_of_a_killed_run_are_removed(server: Server, tmp_path: Path) -> None:
    # A pod killed mid-download (OOM, eviction) never runs its cleanup; the retry must not keep its bytes.
    make_tar(server.root / "model.tar.gz", FAKE_MODEL)
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / ".model.staging-deadbeef" / "unet").mkdir(parents=True)
    (cache / ".model.staging-deadbeef" / "unet" / "weights.bin").write_bytes(b"x" * 100)
    (cache / ".model.old-cafecafe").mkdir()
    (cache / ".download-abc123").write_bytes(b"partial")
    dest = cache / "model"
    assert main(["--dest", str(dest), "--url", server.url("model.tar.gz"), *OPT_INS]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["model"]
    assert (dest / MARKER).exists()


def test_a_long_error_keeps_the_termination_message_valid_json(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    url = "https://models.example/" + "é" * 1500 + ".tar.gz"  # escaped in JSON: longer than 4000 characters
    assert (
        main(["--dest", str(tmp_path / "model"), "--url", url.replace("https", "ftp"), "--termination-log", str(log)])
        == 2
    )
    text = log.read_text()
    assert len(text.encode()) <= 4000
    summary = json.loads(text)
    assert summary["error"].startswith("unsupported URL scheme") and summary["error"].endswith("...")
