"""The final layout of an archive, decided from its member list before anything is written.

Nothing here touches the filesystem: member names are split into components, the single top-level
folder an archive often has is unwrapped *here* (its prefix is stripped from every name, never moved
after extraction), and every link is resolved against that final layout, the way the kernel will
resolve it. What is refused, and why:

- absolute names, ``..`` components, empty names, components over NAME_MAX, paths over the length
  and depth limits, the cache marker's name at the root;
- any member whose path goes through a symlink member, or through a file;
- the same path twice (a link replaced by a file or the reverse), except a directory repeated;
- a symlink to an absolute path, one that leaves the destination (after unwrapping), one that passes
  through another symlink (no chains, so a chain of long links cannot outgrow PATH_MAX), one to
  something the archive does not hold, and one to its own folder or a folder above it (a loop);
- a hard link whose target is not a regular file member inside the final layout.

Directories and regular files are then created by :mod:`kubediffusion.fetch.archive` itself, symlinks
last and with the normalised targets computed here, so what is written is exactly what was checked.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kubediffusion.fetch.errors import ArchiveError, UnsafeArchiveError
from kubediffusion.fetch.limits import NAME_MAX, Limits

Kind = Literal["file", "dir", "symlink", "hardlink"]
Parts = tuple[str, ...]
# What an archive must hold: a diffusers pipeline (the model), or weights (an adapter or a component:
# a .safetensors file, or the one the spec names).
Content = Literal["pipeline", "weights"]
PIPELINE_INDEX = "model_index.json"
WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Member:
    """One archive member as the readers see it; ``index`` finds its contents again."""

    name: str
    kind: Kind
    size: int = 0
    target: str = ""  # symlinks: relative to the link's folder; hard links: to the archive's root
    index: int = 0


@dataclass
class Layout:
    directories: list[Parts] = field(default_factory=list)  # parents before children
    files: list[tuple[Parts, Member]] = field(default_factory=list)  # in archive order
    hardlinks: list[tuple[Parts, Parts]] = field(default_factory=list)  # (link, regular file)
    symlinks: list[tuple[Parts, str]] = field(default_factory=list)  # (link, normalised target)
    total_bytes: int = 0
    unwrapped: str = ""  # the top-level folder whose prefix was stripped, if any


def show(parts: Parts) -> str:
    return quote_name("/".join(parts) or ".")


def quote_name(name: str, limit: int = 120) -> str:
    """A member name for a message: quoted, and shortened (the status has room for a sentence, not a path)."""
    return repr(name if len(name) <= limit else name[: limit // 2] + "..." + name[-limit // 2 :])


_KIND_WORDS = {"file": "file", "dir": "directory", "symlink": "symlink", "hardlink": "hard link"}


def split_name(name: str, *, what: str) -> Parts:
    """``a/./b//c/`` -> ``("a", "b", "c")``; absolute paths and ``..`` are refused outright."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{what} has a NUL character in its name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise UnsafeArchiveError(f"{what} has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} escapes the destination (path traversal)")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise UnsafeArchiveError(f"{what} has a path component longer than {NAME_MAX} bytes")
    return parts


def _top_folder(named: Sequence[tuple[Member, Parts]]) -> str:
    """The single non-hidden top-level folder to unwrap, or "" (the archive is used as it is)."""
    if any(parts == (PIPELINE_INDEX,) for _, parts in named):
        return ""
    visible = {parts[0] for _, parts in named if parts and not parts[0].startswith(".")}
    if len(visible) != 1:
        return ""
    (top,) = visible
    if any(parts == (top,) and member.kind != "dir" for member, parts in named):
        return ""
    return top


class _Planner:
    def __init__(self, limits: Limits, reserved: Collection[str]) -> None:
        self.limits = limits
        self.reserved = reserved
        self.tree: dict[Parts, Kind] = {(): "dir"}
        self.top = ""

    def outside(self) -> str:
        return f" (after unwrapping the top-level folder {quote_name(self.top)})" if self.top else ""

    def final(self, parts: Parts) -> Parts | None:
        """``parts`` with the top-level folder stripped; None for what unwrapping leaves out."""
        if not self.top:
            return parts
        if parts[:1] != (self.top,):
            return None  # a hidden top-level entry beside the folder (.DS_Store and the like)
        return parts[1:]

    def check_limits(self, member: Member, parts: Parts) -> None:
        what = f"archive member {quote_name(member.name)}"
        if len("/".join(parts).encode("utf-8", "surrogateescape")) > self.limits.max_path_length:
            raise UnsafeArchiveError(f"{what} has a path longer than {self.limits.max_path_length} bytes")
        if len(parts) > self.limits.max_depth:
            raise UnsafeArchiveError(f"{what} is nested deeper than {self.limits.max_depth} folders")
        if len(parts) == 1 and parts[0] in self.reserved:
            raise UnsafeArchiveError(f"{what} uses the reserved name {parts[0]!r}")

    def add(self, member: Member, parts: Parts) -> None:
        what = f"archive member {quote_name(member.name)}"
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            kind = self.tree.setdefault(parent, "dir")
            if kind == "symlink":
                raise UnsafeArchiveError(f"{what} goes through the symlink {show(parent)}")
            if kind != "dir":
                raise UnsafeArchiveError(f"{what} is inside {show(parent)}, which is a file")
        old = self.tree.get(parts)
        if old is not None and not (old == "dir" and member.kind == "dir"):
            raise UnsafeArchiveError(
                f"{what} appears twice (as a {_KIND_WORDS[old]} and as a {_KIND_WORDS[member.kind]}): refused"
            )
        self.tree[parts] = member.kind

    def resolve_symlink(self, member: Member, parts: Parts) -> str:
        """The normalised target of a symlink member, after every check against the final layout."""
        what, target = f"archive member {quote_name(member.name)}", member.target
        if not target or "\x00" in target:
            raise UnsafeArchiveError(f"{what} is a symlink with an empty or invalid target")
        if target.startswith("/"):
            raise UnsafeArchiveError(f"{what} links to absolute path {quote_name(target)}")
        if len(target.encode("utf-8", "surrogateescape")) > self.limits.max_path_length:
            raise UnsafeArchiveError(f"{what} has a link target longer than {self.limits.max_path_length} bytes")
        current = list(parts[:-1])
        steps = target.split("/")
        for position, step in enumerate(steps):
            if step in ("", "."):
                continue
            if step == "..":
                if not current:
                    raise UnsafeArchiveError(
                        f"{what} links outside the destination ({quote_name(target)}){self.outside()}"
                    )
                current.pop()
                continue
            current.append(step)
            kind = self.tree.get(tuple(current))
            if kind is None:
                raise UnsafeArchiveError(f"{what} links to {quote_name(target)}, which the archive does not hold")
            if kind == "symlink":
                raise UnsafeArchiveError(
                    f"{what} links through another symlink ({show(tuple(current))}): link chains are refused"
                )
            if kind != "dir" and position != len(steps) - 1:
                raise UnsafeArchiveError(f"{what} links through {show(tuple(current))}, which is a file")
        resolved = tuple(current)
        if self.tree[resolved] == "dir" and parts[: len(resolved)] == resolved:
            raise UnsafeArchiveError(f"{what} links to its own folder or one above it (a loop)")
        return _relative(parts[:-1], resolved)

    def resolve_hardlink(self, member: Member, parts: Parts) -> Parts:
        what = f"archive member {quote_name(member.name)}"
        if member.target.startswith("/"):
            raise UnsafeArchiveError(f"{what} links to absolute path {quote_name(member.target)}")
        try:
            target = split_name(member.target, what=what)
        except UnsafeArchiveError as exc:
            raise UnsafeArchiveError(f"{what} links outside the destination ({quote_name(member.target)})") from exc
        final = self.final(target) if target else None
        if not final:
            raise UnsafeArchiveError(
                f"{what} links outside the destination ({quote_name(member.target)}){self.outside()}"
            )
        for depth in range(1, len(final)):
            if self.tree.get(final[:depth]) == "symlink":
                raise UnsafeArchiveError(f"{what} links through the symlink {show(final[:depth])}")
        if self.tree.get(final) != "file":
            raise UnsafeArchiveError(
                f"{what} is a hard link to {quote_name(member.target)}, which is not a regular file member"
            )
        return final


def _relative(folder: Parts, target: Parts) -> str:
    common = 0
    while common < min(len(folder), len(target)) and folder[common] == target[common]:
        common += 1
    return "/".join([".."] * (len(folder) - common) + list(target[common:]))


def plan(
    members: Sequence[Member],
    limits: Limits,
    *,
    archive_bytes: int,
    max_bytes: int,
    reserved: Collection[str] = (),
    content: Content = "pipeline",
    file: str | None = None,
) -> Layout:
    """Decide everything about ``members`` (in archive order); raise before anything would be written."""
    planner = _Planner(limits, reserved)
    named: list[tuple[Member, Parts]] = []
    for member in members:
        parts = split_name(member.name, what=f"archive member {quote_name(member.name)}")
        if not parts:
            if member.kind != "dir":
                raise UnsafeArchiveError(f"archive member {quote_name(member.name)} has an empty name")
            continue  # the archive's own root folder ("./")
        named.append((member, parts))
    planner.top = _top_folder(named)
    placed: list[tuple[Member, Parts]] = []
    for member, parts in named:
        final = planner.final(parts)
        if not final:
            continue  # the unwrapped folder itself, or a hidden entry beside it
        planner.check_limits(member, final)
        planner.add(member, final)
        placed.append((member, final))
    layout = Layout(unwrapped=planner.top)
    for member, parts in placed:
        if member.kind == "file":
            layout.files.append((parts, member))
            layout.total_bytes += member.size
        elif member.kind == "symlink":
            layout.symlinks.append((parts, planner.resolve_symlink(member, parts)))
        elif member.kind == "hardlink":
            layout.hardlinks.append((parts, planner.resolve_hardlink(member, parts)))
    layout.directories = sorted((p for p, kind in planner.tree.items() if kind == "dir" and p), key=len)
    try:
        limits.check_total(layout.total_bytes, archive_bytes, max_bytes)
    except ValueError as exc:
        raise UnsafeArchiveError(str(exc)) from exc
    if content == "pipeline":
        _require_pipeline(planner.tree, layout)
    else:
        _require_weights(planner.tree, layout, file)
    return layout


def _require_weights(tree: dict[Parts, Kind], layout: Layout, file: str | None) -> None:
    """An adapter's or component's archive: the file the spec names, else at least one .safetensors file
    (pickles are never loaded, so an archive of only those is refused here rather than at the server)."""
    where = f" (after unwrapping the top-level folder {quote_name(layout.unwrapped)})" if layout.unwrapped else ""
    if file is not None:
        if tree.get(tuple(part for part in file.split("/") if part)) not in ("file", "hardlink", "symlink"):
            raise ArchiveError(f"the archive has no {quote_name(file)}{where}")
        return
    if not any(parts[-1].endswith(WEIGHTS_SUFFIX) and kind != "dir" for parts, kind in tree.items() if parts):
        raise ArchiveError(f"the archive has no {WEIGHTS_SUFFIX} file{where}: no weights the server loads")


def _require_pipeline(tree: dict[Parts, Kind], layout: Layout) -> None:
    kind = tree.get((PIPELINE_INDEX,))
    if kind == "symlink":  # a snapshot's model_index.json links into blobs/: resolved above, so a file
        target = dict(layout.symlinks)[(PIPELINE_INDEX,)].split("/")
        kind = tree.get(tuple(target))
    if kind not in ("file", "hardlink"):
        where = f" (after unwrapping the top-level folder {quote_name(layout.unwrapped)})" if layout.unwrapped else ""
        raise ArchiveError(f"the archive has no {PIPELINE_INDEX} at its root{where}: not a diffusers pipeline")
