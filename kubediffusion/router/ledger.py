"""Where usage is counted and quotas are checked: one :class:`Ledger` per router app.

* :class:`MemoryLedger` (the default): this replica's counts, in memory, for ``retention_days`` UTC days.
  Exact for one router replica. With several, each one counts and admits on its own: a tenant can use
  up to its quota *on each replica* per day (N replicas: up to N times the quota), and ``GET /v1/usage``
  answers for the replica that served it (its ``scope`` says ``replica``). A restart forgets the counts.
* :class:`SharedLedger`: one document every replica reads and writes with compare-and-swap (in a cluster
  a ConfigMap, :mod:`.kube_ledger`; resourceVersion preconditions, a 409 read again). Exact across replicas:

  - a request of a tenant *with a quota* is admitted by one CAS write that adds its images, after reading
    the document fresh (this replica's writes still pending go along in the same write), so two replicas
    can never both spend the last image; the write is awaited before the request goes to a pod;
  - everything else (the images of tenants without a quota, refunds of failed requests, the counts of
    successes) is added to a pending book in memory and written by a background flush every
    ``flush_seconds`` (and at shutdown), in one CAS write per flush whatever the traffic. A refund is
    seen by the other replicas after that flush: never an overspent quota, at worst a quota spent a
    moment longer than it was;
  - while the document cannot be read or written, requests of tenants with a quota get a 503 with
    Retry-After (fail closed: a quota is a promise to someone paying for the GPUs); the others are
    served and their counts wait in memory, flushed when the store is back (lost if the replica dies
    before that, said in the log). ``GET /v1/usage`` reads the document (``scope``: ``cluster``).

Days older than ``retention_days`` are dropped from the document on each write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import date
from typing import Protocol

from kubediffusion.api.errors import ServiceUnavailableError
from kubediffusion.router.usagebook import Counts, UsageBook, oldest_kept, utc_day

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 8
STORE_RETRY_AFTER = 5


class Ledger(Protocol):
    @property
    def scope(self) -> str:
        """``cluster`` when every replica shares the counts, ``replica`` when each keeps its own."""
        ...

    async def admit(self, day: date, tenant: str, model: str, images: int, limit: int | None) -> bool:
        """Count ``images`` for ``tenant`` on ``day`` unless that would take it past ``limit``
        (None: no limit); False when refused. ServiceUnavailableError when it cannot tell."""
        ...

    def record(self, day: date, tenant: str, model: str, delta: Counts) -> None:
        """Add ``delta`` (never refused; negative images are a refund)."""
        ...

    async def book(self) -> UsageBook:
        """The counts as they stand (a copy)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class MemoryLedger:
    scope = "replica"

    def __init__(self, *, retention_days: int = 31, clock: Callable[[], float]) -> None:
        self._book = UsageBook()
        self._retention_days = retention_days
        self._clock = clock

    async def admit(self, day: date, tenant: str, model: str, images: int, limit: int | None) -> bool:
        # No await between the check and the count: concurrent requests on one event loop cannot both pass.
        if limit is not None and self._book.images(day, tenant) + images > limit:
            return False
        self.record(day, tenant, model, Counts(images=images))
        return True

    def record(self, day: date, tenant: str, model: str, delta: Counts) -> None:
        self._book.add(day, tenant, model, delta)
        self._book.prune(oldest_kept(utc_day(self._clock()), self._retention_days))

    async def book(self) -> UsageBook:
        self._book.prune(oldest_kept(utc_day(self._clock()), self._retention_days))
        return self._book.copy()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Document(Protocol):
    """One small document (string keys to string values) with a version, written by compare-and-swap."""

    async def read(self) -> tuple[dict[str, str], str]:
        """Its data and version. OSError (or any error named in the implementation) when unreachable."""
        ...

    async def write(self, data: dict[str, str], version: str) -> str | None:
        """Replace the data if the version is still ``version``: the new version, or None (a conflict)."""
        ...

    async def close(self) -> None: ...


class StoreError(Exception):
    """The shared document could not be read or written (the API server is away, RBAC, too large, ...)."""


class MemoryDocument:
    """A :class:`Document` in memory: what several router apps in one test share instead of a ConfigMap."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.version = 0
        self.writes = 0
        self.conflicts = 0
        self.fail = False  # True: every read and write raises StoreError (the API server is away)

    async def read(self) -> tuple[dict[str, str], str]:
        if self.fail:
            raise StoreError("store unreachable")
        await asyncio.sleep(0)  # a real read lets other tasks run
        return dict(self.data), str(self.version)

    async def write(self, data: dict[str, str], version: str) -> str | None:
        if self.fail:
            raise StoreError("store unreachable")
        await asyncio.sleep(0)
        if version != str(self.version):
            self.conflicts += 1
            return None
        self.data, self.version, self.writes = dict(data), self.version + 1, self.writes + 1
        return str(self.version)

    async def close(self) -> None:
        return None


class SharedLedger:
    scope = "cluster"

    def __init__(
        self,
        document: Document,
        *,
        retention_days: int = 31,
        flush_seconds: float = 2.0,
        clock: Callable[[], float],
    ) -> None:
        self._document = document
        self._retention_days = retention_days
        self._flush_seconds = flush_seconds
        self._clock = clock
        self._pending = UsageBook()
        self._lock = asyncio.Lock()  # one read-modify-write of this replica at a time
        self._flusher: asyncio.Task[None] | None = None

    def record(self, day: date, tenant: str, model: str, delta: Counts) -> None:
        self._pending.add(day, tenant, model, delta)

    async def admit(self, day: date, tenant: str, model: str, images: int, limit: int | None) -> bool:
        if limit is None:
            self.record(day, tenant, model, Counts(images=images))
            return True
        admitted = False

        def change(book: UsageBook) -> bool:
            nonlocal admitted
            admitted = book.images(day, tenant) + images <= limit
            if admitted:
                book.add(day, tenant, model, Counts(images=images))
            return admitted

        try:
            await self._write(change)
        except StoreError as exc:
            log.error("usage store unavailable, request of tenant %s with a quota refused: %s", tenant, exc)
            raise ServiceUnavailableError(
                "The router cannot check your quota right now. Please try again later.",
                code="quota_unavailable",
                retry_after=STORE_RETRY_AFTER,
            ) from None
        return admitted

    async def flush(self) -> None:
        """Write what is pending (StoreError when the store is away; it stays pending)."""
        if self._pending:
            await self._write(lambda _book: True)

    async def _write(self, change: Callable[[UsageBook], bool]) -> None:
        """Read, apply the pending counts and ``change``, write at the version read; again on a conflict.
        ``change`` returns False to write nothing (then the pending counts stay pending)."""
        async with self._lock:
            for _ in range(MAX_CAS_ATTEMPTS):
                data, version = await self._read()
                pending, self._pending = self._pending, UsageBook()
                book = UsageBook.from_data(data)
                book.merge(pending)
                try:
                    if not change(book):
                        self._pending.merge(pending)
                        return
                    book.prune(oldest_kept(utc_day(self._clock()), self._retention_days))
                    written = await self._document.write(book.to_data(), version)
                except StoreError:
                    self._pending.merge(pending)
                    raise
                except Exception as exc:
                    self._pending.merge(pending)
                    raise StoreError(f"{type(exc).__name__}: {exc}") from exc
                except BaseException:
                    self._pending.merge(pending)
                    raise
                if written is not None:
                    return
                self._pending.merge(pending)  # a conflict: someone wrote in between; read again
            raise StoreError(f"{MAX_CAS_ATTEMPTS} conflicting writes in a row")

    async def _read(self) -> tuple[dict[str, str], str]:
        try:
            return await self._document.read()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def book(self) -> UsageBook:
        try:
            data, _ = await self._read()
        except StoreError as exc:
            raise ServiceUnavailableError(
                "The usage store cannot be read right now. Please try again later.",
                code="usage_unavailable",
                retry_after=STORE_RETRY_AFTER,
            ) from exc
        book = UsageBook.from_data(data)
        book.merge(self._pending)  # this replica's latest, not yet written
        book.prune(oldest_kept(utc_day(self._clock()), self._retention_days))
        return book

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush()
        except StoreError as exc:
            log.error("usage counts not written at shutdown, lost: %s", exc)
        finally:
            await self._document.close()

    async def _flush_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except StoreError as exc:
                if not failing:
                    log.warning("usage counts not written yet (kept, retried): %s", exc)
                failing = True
                continue
            if failing:
                log.info("usage counts written again")
            failing = False
