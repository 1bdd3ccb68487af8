"""Where images live until they expire: those of ``response_format=url`` answers (their links serve
them) and those a request asked to ``store`` (fetched again with ``GET /v1/images/{id}``).

:class:`ImageStore` is the interface; :class:`FilesystemStore` keeps files in one directory (a PVC
in a cluster, shared by router replicas when it is ReadWriteMany). An S3-compatible store is the
intended extension point for several replicas (docs/api.md): implement ``put``/``get``/
``delete_older_than`` against a bucket (the record as object metadata or a sidecar object, expiry as a
lifecycle rule) and pick it in ``app.create_app``. It is not shipped: there is nothing to test it
against here.

Ids are random hex (see :mod:`kubediffusion.router.signing`); an image is ``<id>.<ext>`` where the
extension comes from the image bytes themselves, so it is served with the right content type, and
its :class:`ImageRecord` (who stored it, for which conversation) is ``<id>.json`` beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class ImageRecord:
    """What is kept with an image. ``owner`` is the storing caller's key fingerprint (None while
    authentication is off): with keys on, only that key may fetch it by id."""

    created: int
    owner: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    content_type: str
    record: ImageRecord | None  # None: stored without one (by an older router)


class ImageStore(Protocol):
    async def put(self, data: bytes, record: ImageRecord | None = None, *, image_id: str | None = None) -> str:
        """Store ``data``; its id (``image_id`` when given: a fresh one from :func:`new_image_id`)."""
        ...

    async def get(self, image_id: str) -> StoredImage | None: ...

    async def delete_older_than(self, seconds: float) -> int: ...


class FilesystemStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def put(self, data: bytes, record: ImageRecord | None = None, *, image_id: str | None = None) -> str:
        image_id = image_id or new_image_id()
        if not is_valid_id(image_id):
            raise ValueError("image ids are 32 lower-case hex digits")
        meta = json.dumps(asdict(record)).encode() if record is not None else None
        await asyncio.to_thread(self._write, image_id, sniff_format(data), data, meta)
        return image_id

    def _write(self, image_id: str, ext: str, data: bytes, meta: bytes | None) -> None:
        self._ensure_dir()
        if meta is not None:  # first, so an image is never seen without its owner
            self._write_file(self.directory / f"{image_id}.json", meta)
        self._write_file(self.directory / f"{image_id}.{ext}", data)

    def _write_file(self, path: Path, data: bytes) -> None:
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, image_id: str) -> StoredImage | None:
        if not is_valid_id(image_id):
            return None
        return await asyncio.to_thread(self._read, image_id)

    def _read(self, image_id: str) -> StoredImage | None:
        for ext, content_type in CONTENT_TYPES.items():
            path = self.directory / f"{image_id}.{ext}"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            return StoredImage(data, content_type, self._read_record(image_id))
        return None

    def _read_record(self, image_id: str) -> ImageRecord | None:
        try:
            fields = json.loads((self.directory / f"{image_id}.json").read_bytes())
            return ImageRecord(**fields)
        except (OSError, ValueError, TypeError):  # missing, or not written by this version
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
