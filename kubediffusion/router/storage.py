"""Where ``response_format=url`` images live until their links expire.

:class:`ImageStore` is the interface; :class:`FilesystemStore` keeps files in one directory (a PVC
in a cluster, shared by router replicas when it is ReadWriteMany). An S3-compatible store is the
intended extension point: implement ``put``/``get``/``delete_older_than`` against a bucket and pick
it in ``app.create_app`` (not shipped: there is nothing to test it against here).

Ids are random hex (see :mod:`kubediffusion.router.signing`); a file is ``<id>.<ext>`` where the
extension comes from the image bytes themselves, so it is served with the right content type.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

from kubediffusion.router.signing import is_valid_id, new_image_id

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


def sniff_format(data: bytes) -> str:
    """The image format from its magic bytes; "png" when unknown (the API's default)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "png"


class ImageStore(Protocol):
    async def put(self, data: bytes) -> str: ...

    async def get(self, image_id: str) -> tuple[bytes, str] | None: ...

    async def delete_older_than(self, seconds: float) -> int: ...


class FilesystemStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def put(self, data: bytes) -> str:
        image_id = new_image_id()
        await asyncio.to_thread(self._write, image_id, sniff_format(data), data)
        return image_id

    def _write(self, image_id: str, ext: str, data: bytes) -> None:
        self._ensure_dir()
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.directory / f"{image_id}.{ext}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, image_id: str) -> tuple[bytes, str] | None:
        if not is_valid_id(image_id):
            return None
        return await asyncio.to_thread(self._read, image_id)

    def _read(self, image_id: str) -> tuple[bytes, str] | None:
        for ext, content_type in CONTENT_TYPES.items():
            path = self.directory / f"{image_id}.{ext}"
            try:
                return path.read_bytes(), content_type
            except FileNotFoundError:
                continue
        return None

    async def delete_older_than(self, seconds: float) -> int:
        return await asyncio.to_thread(self._sweep, time.time() - seconds)

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
