"""Safe extraction of model archives (.tar.gz, .tgz, .tar, .zip) into a directory.

Every member is checked before anything is written: no absolute paths, no ``..`` escaping the
destination, no links pointing outside it, no device files or FIFOs. The tar path also extracts with
Python's ``data`` filter as a second line of defence. Zip archives may not contain symlinks at all.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class UnsafeArchiveError(ValueError):
    """The archive tries to write outside the destination (or contains something that is not a file)."""


def archive_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lowered.endswith(s)), None)


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or ".." in PurePosixPath(normal).parts:
        raise UnsafeArchiveError(f"archive member {name!r} escapes the destination (path traversal)")


def _check_link(name: str, target: str, *, hard: bool) -> None:
    if target.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r} links to absolute path {target!r}")
    # Symlink targets are relative to the link's directory; hardlink targets to the archive root.
    base = "" if hard else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"archive member {name!r} links outside the destination ({target!r})")


def check_tar(tar: tarfile.TarFile) -> None:
    for member in tar.getmembers():
        _check_name(member.name)
        if member.issym() or member.islnk():
            _check_link(member.name, member.linkname, hard=member.islnk())
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"archive member {member.name!r} is not a regular file or directory")


def check_zip(archive: zipfile.ZipFile) -> None:
    for info in archive.infolist():
        _check_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"archive member {info.filename!r} is a symlink (not allowed in zip archives)")


def extract(archive_path: Path, dest: Path, *, name: str) -> None:
    """Extract ``archive_path`` (its format told by ``name``'s suffix) into the existing ``dest``."""
    suffix = archive_suffix(name)
    if suffix is None:
        raise ValueError(f"{name!r} is not a .tar.gz, .tgz, .tar or .zip archive")
    if suffix == ".zip":
        with zipfile.ZipFile(archive_path) as archive:
            check_zip(archive)
            archive.extractall(dest)
        return
    with tarfile.open(archive_path, mode="r:*") as tar:
        check_tar(tar)
        tar.extractall(dest, filter="data")


def model_root(directory: Path) -> Path:
    """An archive holding one top-level directory (``sdxl/model_index.json``) is unwrapped."""
    if (directory / "model_index.json").exists():
        return directory
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return directory
