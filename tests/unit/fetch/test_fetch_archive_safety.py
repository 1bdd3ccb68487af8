"""Hostile archives, built here, through ``fetch-model --url`` against a local server.

Each one must exit 2 (permanent), leave every file outside the destination as it was (a sentinel
tree beside the destination and one further out, plus an earlier cache in the destination itself),
leave no link under the destination that leads out, and name the reason. A snapshot-shaped archive
whose files link into ``blobs/`` must succeed.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fetch_support import OPT_INS, PIPELINE, M, Server, build, links_leading_out, run, snapshot

from kubediffusion.fetch.archive import _Writer, extract
from kubediffusion.fetch.errors import ArchiveError, UnsafeArchiveError
from kubediffusion.fetch.layout import Member

ALL = ("tar", "tar.gz", "zip")
TAR = ("tar", "tar.gz")


@dataclass(frozen=True)
class Case:
    id: str
    members: Callable[[Path], list[M]]  # given the folder an escape would aim at
    words: tuple[str, ...]  # one of them is in the error
    formats: tuple[str, ...] = ALL
    flags: tuple[str, ...] = ()


def _cve_2025_4517(component: int) -> Callable[[Path], list[M]]:
    """The shape of CVE-2025-4517: nested long folders behind one-letter links, so the resolved path
    overflows PATH_MAX; a link through them to the top, an "escape" link above it, and writes through it."""

    def members(outside: Path) -> list[M]:
        steps = "abcdefghijklmnop"
        folder = "d" * component
        out, path = [PIPELINE], ""
        for step in steps:
            out.append(M(f"{path}{folder}", "dir"))
            out.append(M(f"{path}{step}", "symlink", target=folder))
            path = f"{path}{folder}/"
        link = "/".join(steps) + "/" + "l" * 254
        out.append(M(link, "symlink", target="/".join([".."] * len(steps))))
        out.append(M("escape", "symlink", target=f"{link}/../" + "../" * 4 + outside.name))
        out.append(M("flaglink", "hardlink", target="escape/flag"))
        out.append(M("flaglink", data=b"overwrite"))
        out.append(M("escape/newfile", data=b"new"))
        return out

    return members


CASES = [
    Case("absolute path", lambda o: [PIPELINE, M(str(o / "evil.txt"), data=b"evil")], ("absolute path",)),
    Case("dotdot traversal", lambda o: [PIPELINE, M(f"../../../{o.name}/evil.txt", data=b"e")], ("path traversal",)),
    Case("dotdot inside a name", lambda o: [PIPELINE, M("unet/../../evil.txt", data=b"e")], ("path traversal",)),
    Case(
        "symlink to outside",
        lambda o: [PIPELINE, M("unet", "symlink", target=f"../../../{o.name}")],
        ("links outside",),
    ),
    Case("symlink to an absolute path", lambda o: [PIPELINE, M("unet", "symlink", target=str(o))], ("absolute path",)),
    Case(
        "file written through a symlinked folder (pointing out)",
        lambda o: [PIPELINE, M("unet", "symlink", target=str(o)), M("unet/evil.txt", data=b"evil")],
        ("absolute path", "through the symlink"),
    ),
    Case(
        "file written through a symlinked folder (pointing in)",
        lambda o: [PIPELINE, M("vae", "dir"), M("unet", "symlink", target="vae"), M("unet/x.bin", data=b"x")],
        ("through the symlink",),
    ),
    Case(
        "symlink chain",
        lambda o: [PIPELINE, M("a", "symlink", target="b"), M("b", "symlink", target="model_index.json")],
        ("link chains",),
    ),
    Case(
        "symlink chain out through a folder link",
        lambda o: [
            PIPELINE,
            M("sub/x", data=b"x"),
            M("s", "symlink", target="sub"),
            M("up", "symlink", target="s/../.."),
        ],
        ("link chains",),
    ),
    Case("CVE-2025-4517 shape, default limits", _cve_2025_4517(247), ("longer than 1024",), TAR),
    Case(
        "CVE-2025-4517 shape, past the length limits",
        _cve_2025_4517(247),
        ("through the symlink",),
        TAR,
        ("--max-path-length", "8192", "--max-depth", "64"),
    ),
    Case("CVE-2025-4517 shape, short folders", _cve_2025_4517(20), ("through the symlink",), ALL[:2]),
    Case(
        "link inside before unwrapping, outside after",
        lambda o: [M("top/model_index.json", data=b"{}"), M("top/link", "symlink", target="../top/model_index.json")],
        ("links outside", "after unwrapping"),
    ),
    Case(
        "link to a hidden sibling the unwrapping leaves out",
        lambda o: [
            M("top/model_index.json", data=b"{}"),
            M(".hidden", data=b"h"),
            M("top/l", "symlink", target="../.hidden"),
        ],
        ("links outside",),
    ),
    Case(
        "hard link to outside",
        lambda o: [PIPELINE, M("passwd", "hardlink", target=f"../../{o.name}/keep.txt")],
        ("links outside",),
        TAR,
    ),
    Case(
        "hard link to an absolute path",
        lambda o: [PIPELINE, M("passwd", "hardlink", target=str(o / "keep.txt"))],
        ("absolute path",),
        TAR,
    ),
    Case(
        "hard link to a symlink",
        lambda o: [PIPELINE, M("l", "symlink", target="model_index.json"), M("h", "hardlink", target="l")],
        ("not a regular file member",),
        TAR,
    ),
    Case(
        "hard link through a symlink",
        lambda o: [PIPELINE, M("sub/f", data=b"f"), M("s", "symlink", target="sub"), M("h", "hardlink", target="s/f")],
        ("through the symlink",),
        TAR,
    ),
    Case(
        "hard link out of the unwrapped folder",
        lambda o: [M("top/model_index.json", data=b"{}"), M("top/h", "hardlink", target="model_index.json")],
        ("links outside", "after unwrapping"),
        TAR,
    ),
    Case("character device", lambda o: [PIPELINE, M("null", "chr")], ("character device",)),
    Case("block device", lambda o: [PIPELINE, M("sda", "blk")], ("block device",)),
    Case("FIFO", lambda o: [PIPELINE, M("pipe", "fifo")], ("FIFO",)),
    Case("socket", lambda o: [PIPELINE, M("sock", "socket")], ("socket",), ("zip",)),
    Case(
        "duplicate: a file replaces a link",
        lambda o: [PIPELINE, M("unet", "symlink", target="model_index.json"), M("unet", data=b"x")],
        ("appears twice",),
    ),
    Case(
        "duplicate: a link replaces a file",
        lambda o: [PIPELINE, M("unet/c.json", data=b"{}"), M("unet/c.json", "symlink", target="../model_index.json")],
        ("appears twice",),
    ),
    Case(
        "duplicate: a link replaces a folder",
        lambda o: [PIPELINE, M("unet/c.json", data=b"{}"), M("unet", "symlink", target=str(o))],
        ("appears twice",),
    ),
    Case("symlink with an empty name", lambda o: [PIPELINE, M("", "symlink", target="..")], ("empty name",), TAR),
    Case("symlink named '.'", lambda o: [PIPELINE, M("./", "symlink", target="..")], ("empty name",), TAR),
    Case("symlink loop", lambda o: [PIPELINE, M("unet/self", "symlink", target="..")], ("a loop",)),
    Case("dangling symlink", lambda o: [PIPELINE, M("unet", "symlink", target="nothing/there")], ("does not hold",)),
    Case("the cache marker's name", lambda o: [PIPELINE, M(".kubediffusion-complete.json", data=b"{}")], ("reserved",)),
    Case("overlong path", lambda o: [PIPELINE, M("/".join(["p" * 100] * 11), data=b"x")], ("longer than 1024",)),
    Case("overlong component", lambda o: [PIPELINE, M("x" * 300, data=b"x")], ("longer than 255",)),
    Case("too deep", lambda o: [PIPELINE, M("/".join("d" * 40), data=b"x")], ("deeper than 32",)),
    Case(
        "too many members",
        lambda o: [PIPELINE, *(M(f"f{i}", data=b"") for i in range(10_001))],
        ("more than 10000 members",),
        ("tar",),
    ),
    Case(
        "too many members (lowered)",
        lambda o: [PIPELINE, *(M(f"f{i}", data=b"") for i in range(10))],
        ("more than 5 members",),
        flags=("--max-members", "5"),
    ),
    Case(
        "bomb",
        lambda o: [PIPELINE, M("unet/zeros.bin", data=bytes(64 << 20))],
        ("decompression bomb",),
        ("tar.gz", "zip"),
    ),
    Case(
        "over the byte limit",
        lambda o: [PIPELINE, M("unet/w.bin", data=os.urandom(20_000))],
        ("more than the limit of 10240",),
        flags=("--max-bytes", "10Ki"),
    ),
    Case("empty archive", lambda o: [], ("no model_index.json",)),
    Case(
        "no pipeline",
        lambda o: [M("unet/config.json", data=b"{}"), M("vae/config.json", data=b"{}")],
        ("no model_index.json",),
    ),
    Case("pipeline two folders down", lambda o: [M("a/b/model_index.json", data=b"{}")], ("no model_index.json",)),
    Case(
        "model_index.json is a folder",
        lambda o: [M("model_index.json/x", data=b"{}")],
        ("no model_index.json",),
    ),
]


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """The destination holds an earlier cache; a sentinel tree sits beside it and another further out."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    dest = cache / "model"
    for directory, files in ((dest, ("model_index.json", "unet/old.bin")), (cache / "sentinel", ("keep.txt",))):
        for name in files:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(f"earlier {name}")
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (outside / "flag").write_text("flag")
    os.symlink("../../outside", cache / "sentinel" / "to-outside")
    return {"root": tmp_path, "dest": dest, "outside": outside}


def _refused(server: Server, world: dict[str, Path], name: str, *flags: str) -> str:
    root, dest = world["root"], world["dest"]
    before = snapshot(root, skip=("www", "termination-log"))
    code, summary = run(dest, root, "--url", server.url(name), *OPT_INS, *flags)
    assert code == 2, summary
    assert snapshot(root, skip=("www", "termination-log")) == before, "nothing changed, in or out of the destination"
    assert links_leading_out(dest) == []
    return str(summary["error"])


@pytest.mark.parametrize(("case", "fmt"), [pytest.param(c, f, id=f"{c.id} [{f}]") for c in CASES for f in c.formats])
def test_hostile_archive_is_refused_and_nothing_changes(
    server: Server, world: dict[str, Path], case: Case, fmt: str
) -> None:
    name = f"evil.{fmt}"
    build(server.root / name, case.members(world["outside"]), fmt)
    error = _refused(server, world, name, *case.flags)
    assert any(word in error for word in case.words), error


def _declare_size(data: bytearray, name: bytes, size: int) -> None:
    """Patch the uncompressed size ``name`` declares in its zip local header and central directory entry."""
    for signature, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
        start = data.find(signature)
        while start != -1:
            if data[start + name_at : start + name_at + len(name)] == name:
                struct.pack_into("<I", data, start + size_at, size)
            start = data.find(signature, start + 1)


def test_a_header_that_lies_about_the_size_is_refused(server: Server, world: dict[str, Path]) -> None:
    # A zip member that declares 10 bytes in both headers but holds a megabyte of zeros.
    build(server.root / "liar.zip", [PIPELINE, M("unet/w.bin", data=bytes(1 << 20))], "zip")
    data = bytearray((server.root / "liar.zip").read_bytes())
    _declare_size(data, b"unet/w.bin", 10)
    (server.root / "liar.zip").write_bytes(bytes(data))
    error = _refused(server, world, "liar.zip")
    assert "broken" in error or "holds more" in error, error


@pytest.mark.parametrize(
    ("declared", "data", "error", "words"),
    [
        (10, b"x" * 50, UnsafeArchiveError, "holds more than the 10 bytes"),
        (200, b"x" * 200, UnsafeArchiveError, "more than the limit of 100 bytes"),
        (5, b"x", ArchiveError, "truncated"),
    ],
)
def test_the_writer_stops_at_the_declared_size_and_at_the_byte_limit(
    tmp_path: Path, declared: int, data: bytes, error: type[Exception], words: str
) -> None:
    # Headers can lie (or a reader can misbehave): the copy itself enforces both bounds.
    writer = _Writer(tmp_path, max_bytes=100)
    try:
        with pytest.raises(error, match=words):
            writer.write(("a.bin",), Member("a.bin", "file", declared), io.BytesIO(data))
    finally:
        writer.close()
    assert (tmp_path / "a.bin").stat().st_size <= min(declared, 100)


@pytest.mark.parametrize("fmt", ALL)
def test_not_an_archive_is_permanent(server: Server, world: dict[str, Path], fmt: str) -> None:
    (server.root / f"junk.{fmt}").write_bytes(os.urandom(4096))
    assert "broken" in _refused(server, world, f"junk.{fmt}")


@pytest.mark.parametrize("fmt", ALL)
def test_a_truncated_archive_is_permanent(server: Server, world: dict[str, Path], fmt: str) -> None:
    build(server.root / f"whole.{fmt}", [PIPELINE, M("unet/w.bin", data=os.urandom(50_000))], fmt)
    whole = (server.root / f"whole.{fmt}").read_bytes()
    (server.root / f"cut.{fmt}").write_bytes(whole[: len(whole) // 2])
    error = _refused(server, world, f"cut.{fmt}")
    assert "broken" in error or "truncated" in error, error


def _snapshot_members() -> list[M]:
    """A Hugging Face snapshot's shape: the pipeline's files are relative links into ``blobs/``."""
    blobs = {"b1": PIPELINE.data, "b2": b'{"sample_size": 8}', "b3": b"w" * 5000}
    return [
        M("snap", "dir"),
        *(M(f"snap/blobs/{name}", data=data) for name, data in blobs.items()),
        M("snap/model_index.json", "symlink", target="blobs/b1"),
        M("snap/unet/config.json", "symlink", target="../blobs/b2"),
        M("snap/unet/diffusion_pytorch_model.safetensors", "symlink", target="./../blobs//b3"),
        M("snap/.hidden-in-folder", data=b"kept"),
    ]


@pytest.mark.parametrize("fmt", ALL)
def test_a_snapshot_with_links_into_blobs_is_extracted(server: Server, world: dict[str, Path], fmt: str) -> None:
    members = _snapshot_members() + (
        [M("snap/unet/copy.json", "hardlink", target="snap/blobs/b2")] if fmt != "zip" else []
    )
    build(server.root / f"snap.{fmt}", members, fmt)
    root, dest = world["root"], world["dest"]
    outside_before = snapshot(root, skip=("www", "termination-log", "cache"))
    sentinel_before = snapshot(root / "cache" / "sentinel")
    code, summary = run(dest, root, "--url", server.url(f"snap.{fmt}"), *OPT_INS)
    assert code == 0, summary
    assert (dest / "model_index.json").is_symlink() and os.readlink(dest / "model_index.json") == "blobs/b1"
    assert (dest / "model_index.json").read_bytes() == PIPELINE.data
    assert (dest / "unet" / "config.json").read_text() == '{"sample_size": 8}'
    weights = dest / "unet" / "diffusion_pytorch_model.safetensors"
    assert os.readlink(weights) == "../blobs/b3", "the normalised target is what gets written"
    assert weights.read_bytes() == b"w" * 5000
    if fmt != "zip":
        assert (dest / "unet" / "copy.json").stat().st_ino == (dest / "blobs" / "b2").stat().st_ino
    assert not (dest / "unet" / "old.bin").exists(), "the earlier cache was replaced"
    assert links_leading_out(dest) == []
    assert snapshot(root, skip=("www", "termination-log", "cache")) == outside_before
    assert snapshot(root / "cache" / "sentinel") == sentinel_before
    assert sorted(p.name for p in (root / "cache").iterdir()) == ["model", "sentinel"]


@pytest.mark.parametrize("fmt", ALL)
def test_python_extraction_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    # Safety must not rest on tarfile's filters (CVE-2025-4517) or zipfile's name cleaning.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the standard library's extraction was called")

    for owner, method in (
        (tarfile.TarFile, "extractall"),
        (tarfile.TarFile, "extract"),
        (zipfile.ZipFile, "extractall"),
        (zipfile.ZipFile, "extract"),
    ):
        monkeypatch.setattr(owner, method, refuse)
    build(tmp_path / f"m.{fmt}", _snapshot_members(), fmt)
    dest = tmp_path / "dest"
    dest.mkdir()
    extract(tmp_path / f"m.{fmt}", dest, name=f"m.{fmt}")
    assert (dest / "model_index.json").read_bytes() == PIPELINE.data
