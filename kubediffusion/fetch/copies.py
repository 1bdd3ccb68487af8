"""Copies of a model side by side in one cache volume: which to remove, and whether a new one fits.

The operator downloads a new source into a directory of its own (``/models/<cache-key>``) beside the copy
the pods still read, and rolls the pods once the new copy is complete (docs/contracts.md). The cache Job
then runs with ``--prune``: every other copy in the volume goes, except ``--dest`` and the ``--keep``
copies the pods still read. A copy is a directory holding the completion marker; staging and download
leftovers of a killed run go too. Nothing else in the volume is touched (``lost+found``, a user's files).

With ``--keep``, a second copy must fit beside the first. Its size is not known before it is
downloaded; the kept copy's (from its marker) is the estimate: a new revision of a model is about as
large as the old one. Too little free space, before or during the download (ENOSPC), is
:class:`CacheTooSmall`: permanent, so the Job fails at once and the model says ``CacheTooSmallForSwap``
while the old copy keeps serving.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kubediffusion.fetch.errors import FetchError
from kubediffusion.fetch.sources import DOWNLOAD_PREFIX
from kubediffusion.imagemodel.names import CACHE_MARKER

log = logging.getLogger("kubediffusion.fetch")

TOO_SMALL = "CacheTooSmallForSwap"  # the reason the operator shows (kubediffusion/imagemodel/status.py)


class CacheTooSmall(FetchError):
    """No room for the new copy beside the one that serves."""

    reason = TOO_SMALL

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def _leftover(path: Path) -> bool:
    name = path.name
    return name.startswith(DOWNLOAD_PREFIX) or (name.startswith(".") and (".staging-" in name or ".old-" in name))


def prune(dest: Path, keep: Sequence[Path]) -> list[Path]:
    """Remove every other copy (and leftover) next to ``dest`` but ``keep``; returns what was removed."""
    parent = dest.parent
    if not parent.is_dir():
        return []
    spared = {dest.resolve(), *(k.resolve() for k in keep)}
    removed = []
    for child in sorted(parent.iterdir()):
        if child.resolve() in spared or child.is_symlink():
            continue
        is_copy = child.is_dir() and (child / CACHE_MARKER).is_file()
        if not (is_copy or _leftover(child)):
            continue
        log.info("removing %s (%s)", child, "an older copy" if is_copy else "a leftover of an unfinished run")
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        removed.append(child)
    return removed


def copy_bytes(copy: Path) -> int:
    """The size its marker records (0 when unknown)."""
    try:
        value = json.loads((copy / CACHE_MARKER).read_text(encoding="utf-8")).get("bytes")
    except (OSError, ValueError, AttributeError):
        return 0
    return int(value) if isinstance(value, int) and value > 0 else 0


def check_room(dest: Path, keep: Sequence[Path]) -> None:
    """Refuse to start a second copy that will not fit beside the largest kept one."""
    if not keep:
        return
    needed = max(copy_bytes(k) for k in keep)
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if needed > free:
        raise CacheTooSmall(
            f"the cache volume has {free} bytes free; a new copy beside the serving one ({needed} bytes) will not"
            " fit: make spec.cache.size larger, or set spec.cache.swap to scaleToZero"
        )


_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def side_by_side(keep: Sequence[Path]) -> Iterator[None]:
    """A full volume while another copy is kept is :class:`CacheTooSmall` (the extractor's own "volume is
    full" error included), not a plain download failure."""
    try:
        yield
    except (OSError, FetchError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if keep and isinstance(cause, OSError) and cause.errno in _FULL:
            raise CacheTooSmall(f"the cache volume filled up beside the serving copy ({exc})") from exc
        raise
