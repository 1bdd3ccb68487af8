"""Whether a file the router re-reads (the API keys file, the tenants file) changed since it was last read.

A file counts as changed when its (modification time, size) differs from the last look, or it appeared or
disappeared; the first look is always a change. Cheap enough for every request: one ``stat``.
"""

from __future__ import annotations

from pathlib import Path

_NEVER = (-1, -1)  # no look yet: differs from every stamp, and from a missing file's None


class FileStamp:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = _NEVER
        self.exists = False  # at the last look

    def changed(self) -> bool:
        """Look again; whether the file changed since the last look (see the module docstring)."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp, self.exists = stamp, stamp is not None
        return True
