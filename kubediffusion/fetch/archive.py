"""Extraction of model archives (.tar.gz, .tgz, .tar, .zip) that cannot write or link outside the destination.

Python's own extraction is not used at all (``extractall`` and its ``data`` filter have had bypasses,
CVE-2025-4517 among them). Instead: the member list is read first and the whole final layout is
decided by :mod:`kubediffusion.fetch.layout` before one byte is written; then directories are made,
regular files are streamed from ``extractfile``/``ZipFile.open`` into files opened with
``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to directory descriptors opened with ``O_NOFOLLOW`` (so
even a wrong plan could not follow a link), hard links point at those files, and symlinks come last.

Zip symlinks (Unix mode ``S_IFLNK``, the target as content) go through the same validation as tar
symlinks and are created the same way. A broken, truncated or unknown archive is an ArchiveError
(permanent); what would escape or break a limit is an UnsafeArchiveError (permanent too).
"""

from __future__ import annotations

import errno
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from kubediffusion.fetch.errors import ArchiveError, FetchError, UnsafeArchiveError
from kubediffusion.fetch.layout import Content, Kind, Layout, Member, Parts, plan, quote_name, show
from kubediffusion.fetch.limits import Limits
from kubediffusion.imagemodel.names import CACHE_MARKER

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError, ValueError)


def archive_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lowered.endswith(s)), None)


@contextmanager
def _reading() -> Iterator[None]:
    """Errors of the archive's own bytes (a local file by now): broken, truncated or not an archive."""
    try:
        yield
    except (*_BROKEN, OSError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ArchiveError(f"the archive is broken or truncated ({type(exc).__name__}: {first_line})") from exc


class _Source(Protocol):
    def members(self, limits: Limits, *, archive_bytes: int, max_bytes: int) -> list[Member]: ...

    def open(self, member: Member) -> IO[bytes]: ...


class _TarSource:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.infos: list[tarfile.TarInfo] = []

    def members(self, limits: Limits, *, archive_bytes: int, max_bytes: int) -> list[Member]:
        out: list[Member] = []
        total = 0
        for info in self.tar:  # lazily: a bomb or a header loop is refused before the whole list is read
            if len(out) >= limits.max_members:
                raise UnsafeArchiveError(f"the archive has more than {limits.max_members} members (--max-members)")
            if info.size < 0:
                raise ArchiveError(f"archive member {quote_name(info.name)} has a negative size")
            kind = _tar_kind(info)
            if kind == "file":
                total += info.size
                _check_total(limits, total, archive_bytes, max_bytes)
            out.append(Member(info.name, kind, info.size if kind == "file" else 0, info.linkname, len(out)))
            self.infos.append(info)
        return out

    def open(self, member: Member) -> IO[bytes]:
        stream = self.tar.extractfile(self.infos[member.index])
        if stream is None:  # pragma: no cover - only for non-file members, which are never opened
            raise ArchiveError(f"archive member {quote_name(member.name)} has no contents")
        return stream


def _tar_kind(info: tarfile.TarInfo) -> Kind:
    what = f"archive member {quote_name(info.name)}"
    if info.issparse():
        raise UnsafeArchiveError(f"{what} is a sparse file, not a regular file or directory")
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    described = (
        "character device"
        if info.ischr()
        else "block device"
        if info.isblk()
        else "FIFO"
        if info.isfifo()
        else f"member of type {info.type!r}"
    )
    raise UnsafeArchiveError(f"{what} is a {described}, not a regular file or directory")


class _ZipSource:
    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.infos: list[zipfile.ZipInfo] = []

    def members(self, limits: Limits, *, archive_bytes: int, max_bytes: int) -> list[Member]:
        infos = self.archive.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeArchiveError(f"the archive has more than {limits.max_members} members (--max-members)")
        total = 0
        out: list[Member] = []
        for info in infos:
            kind = _zip_kind(info)
            target = self._link_target(info, limits) if kind == "symlink" else ""
            if kind == "file":
                total += info.file_size
                _check_total(limits, total, archive_bytes, max_bytes)
            out.append(Member(info.filename, kind, info.file_size if kind == "file" else 0, target, len(out)))
            self.infos.append(info)
        return out

    def _link_target(self, info: zipfile.ZipInfo, limits: Limits) -> str:
        if info.file_size > limits.max_path_length:
            what = f"archive member {quote_name(info.filename)}"
            raise UnsafeArchiveError(f"{what} has a link target longer than {limits.max_path_length} bytes")
        data = self.archive.read(info)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeArchiveError(
                f"archive member {quote_name(info.filename)} has a link target that is not UTF-8"
            ) from exc

    def open(self, member: Member) -> IO[bytes]:
        return self.archive.open(self.infos[member.index])


def _zip_kind(info: zipfile.ZipInfo) -> Kind:
    what = f"archive member {quote_name(info.filename)}"
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{what} is encrypted")
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or fmt == stat.S_IFDIR:
        return "dir"
    if fmt == stat.S_IFLNK:
        return "symlink"
    if fmt in (0, stat.S_IFREG):
        return "file"
    described = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO"}
    described[stat.S_IFSOCK] = "socket"
    kind = described.get(fmt, f"member of mode {fmt:o}")
    raise UnsafeArchiveError(f"{what} is a {kind}, not a regular file or directory")


def _check_total(limits: Limits, total: int, archive_bytes: int, max_bytes: int) -> None:
    try:
        limits.check_total(total, archive_bytes, max_bytes)
    except ValueError as exc:
        raise UnsafeArchiveError(str(exc)) from exc


class _Writer:
    """Creates what the layout says under ``root``, every path walked with O_NOFOLLOW from ``root``'s descriptor."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.budget = max_bytes
        self.written = 0

    def close(self) -> None:
        os.close(self.root_fd)

    @contextmanager
    def _parent(self, parts: Parts) -> Iterator[int]:
        fd = os.dup(self.root_fd)
        try:
            for part in parts[:-1]:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def mkdir(self, parts: Parts) -> None:
        with _writing(parts), self._parent(parts) as fd:
            os.mkdir(parts[-1], 0o755, dir_fd=fd)

    def write(self, parts: Parts, member: Member, stream: IO[bytes]) -> None:
        """Copy at most the declared size and at most what is left of the byte budget (headers can lie)."""
        with (
            _writing(parts),
            self._parent(parts) as fd,
            os.fdopen(os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=fd), "wb") as out,
        ):
            copied = 0
            while True:
                with _reading():
                    chunk = stream.read(CHUNK)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > member.size:
                    raise UnsafeArchiveError(
                        f"archive member {quote_name(member.name)} holds more than the {member.size} bytes it declares"
                    )
                self.written += len(chunk)
                if self.written > self.budget:
                    raise UnsafeArchiveError(
                        f"the archive writes more than the limit of {self.budget} bytes (--max-bytes)"
                    )
                out.write(chunk)
            if copied < member.size:
                raise ArchiveError(
                    f"archive member {quote_name(member.name)} is truncated ({copied} of {member.size} bytes)"
                )

    def hardlink(self, parts: Parts, target: Parts) -> None:
        with _writing(parts), self._parent(target) as source, self._parent(parts) as fd:
            os.link(target[-1], parts[-1], src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)

    def symlink(self, parts: Parts, target: str) -> None:
        with _writing(parts), self._parent(parts) as fd:
            os.symlink(target, parts[-1], dir_fd=fd)


@contextmanager
def _writing(parts: Parts) -> Iterator[None]:
    try:
        yield
    except FetchError:
        raise
    except OSError as exc:
        where = show(parts)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArchiveError(f"the volume is full while writing {where}") from exc
        if exc.errno in (errno.ELOOP, errno.EEXIST, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise UnsafeArchiveError(f"refused to write {where}: {exc.strerror}") from exc
        raise FetchError(f"could not write {where}: {exc.strerror}") from exc


def _write(source: _Source, layout: Layout, dest: Path, max_bytes: int) -> None:
    writer = _Writer(dest, max_bytes)
    try:
        for parts in layout.directories:
            writer.mkdir(parts)
        for parts, member in layout.files:
            with _reading():
                stream = source.open(member)
            with stream:
                writer.write(parts, member, stream)
        for parts, target in layout.hardlinks:
            writer.hardlink(parts, target)
        for parts, link in layout.symlinks:
            writer.symlink(parts, link)
    finally:
        writer.close()


@contextmanager
def _open(archive_path: Path, suffix: str) -> Iterator[_Source]:
    if suffix == ".zip":
        with _reading():
            archive = zipfile.ZipFile(archive_path)
        with archive:
            yield _ZipSource(archive)
    else:
        with _reading():
            # gzip, bzip2, xz or plain, whatever the suffix; closed by the ``with`` below
            tar = tarfile.open(archive_path, mode="r:*")  # noqa: SIM115
        with tar:
            yield _TarSource(tar)


def extract(
    archive_path: Path,
    dest: Path,
    *,
    name: str,
    limits: Limits | None = None,
    content: Content = "pipeline",
    file: str | None = None,
) -> Layout:
    """Extract ``archive_path`` (its format told by ``name``'s suffix) into the existing, empty ``dest``.

    The single top-level folder is unwrapped; ``dest`` must then hold a diffusers pipeline
    (``model_index.json`` at its root), or with ``content`` weights, ``file`` or some .safetensors file.
    ``limits.max_bytes`` None: the free space of ``dest``'s volume.
    """
    limits = limits or Limits()
    suffix = archive_suffix(name)
    if suffix is None:
        raise ArchiveError(f"{name!r} is not a .tar.gz, .tgz, .tar or .zip archive")
    free = shutil.disk_usage(dest).free
    max_bytes = free if limits.max_bytes is None else limits.max_bytes
    archive_bytes = archive_path.stat().st_size
    with _open(archive_path, suffix) as source:
        with _reading():
            members = source.members(limits, archive_bytes=archive_bytes, max_bytes=max_bytes)
        layout = plan(
            members,
            limits,
            archive_bytes=archive_bytes,
            max_bytes=max_bytes,
            reserved=(CACHE_MARKER,),
            content=content,
            file=file,
        )
        if layout.total_bytes > free:
            raise ArchiveError(f"the archive needs {layout.total_bytes} bytes but the volume has {free} free")
        _write(source, layout, dest, max_bytes)
    return layout
