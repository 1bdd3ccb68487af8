"""Usage counts per UTC day, tenant and model: :class:`UsageBook`, pure data (no I/O, no clock).

A quota window is a UTC day (``YYYY-MM-DD``): :func:`utc_day` and :func:`seconds_to_next_day` say which
one a moment falls in and when the next begins. A book is what a ledger (:mod:`.ledger`) keeps, in memory
or in a ConfigMap (:meth:`UsageBook.to_data`: one data key per day, its value compact JSON
``{"<tenant>": {"<model>": {"requests": 1, "images": 2, ...}}}``, about 120 bytes per tenant and model
and day).

``images`` counts the images admitted (a request's images are counted when it is let through, so that
concurrent requests cannot overspend a quota) less those of requests that failed (refunded); the other
fields are counted when a request succeeds, except ``failed_requests``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

DAY_SECONDS = 86_400


def utc_day(timestamp: float) -> date:
    return datetime.fromtimestamp(timestamp, UTC).date()


def seconds_to_next_day(timestamp: float) -> int:
    """Whole seconds from ``timestamp`` to the next 00:00 UTC (at least 1)."""
    return max(1, math.ceil(DAY_SECONDS - timestamp % DAY_SECONDS))


@dataclass
class Counts:
    requests: int = 0
    images: int = 0
    failed_requests: int = 0
    megapixels: float = 0.0
    denoising_steps: int = 0
    gpu_seconds: float = 0.0

    def add(self, other: Counts) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def is_zero(self) -> bool:
        return all(not getattr(self, item.name) for item in fields(self))

    def to_json(self) -> dict[str, int | float]:
        """The non-zero fields (floats rounded to what a bill needs)."""
        values = asdict(self)
        for name in ("megapixels", "gpu_seconds"):
            values[name] = round(values[name], 6)
        return {name: value for name, value in values.items() if value}

    @classmethod
    def from_json(cls, data: Any) -> Counts:
        if not isinstance(data, Mapping):
            return cls()
        counts = cls()
        for item in fields(cls):
            value = data.get(item.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                setattr(counts, item.name, int(value) if item.type == "int" else float(value))
        return counts


Row = tuple[date, str, str, Counts]  # day, tenant, model, counts


class UsageBook:
    def __init__(self) -> None:
        self.days: dict[date, dict[str, dict[str, Counts]]] = {}

    def add(self, day: date, tenant: str, model: str, delta: Counts) -> None:
        self.days.setdefault(day, {}).setdefault(tenant, {}).setdefault(model, Counts()).add(delta)

    def merge(self, other: UsageBook) -> None:
        for day, tenant, model, counts in other.rows():
            self.add(day, tenant, model, counts)

    def images(self, day: date, tenant: str) -> int:
        """The images ``tenant`` has used (or has on the way) on ``day``, all models together."""
        return sum(counts.images for counts in self.days.get(day, {}).get(tenant, {}).values())

    def prune(self, oldest_kept: date) -> None:
        for day in [day for day in self.days if day < oldest_kept]:
            del self.days[day]

    def rows(self, tenant: str | None = None, first: date | None = None, last: date | None = None) -> Iterator[Row]:
        """Every (day, tenant, model, counts), sorted, optionally of one tenant and between two days."""
        for day in sorted(self.days):
            if (first is not None and day < first) or (last is not None and day > last):
                continue
            for name in sorted(self.days[day]):
                if tenant is not None and name != tenant:
                    continue
                for model, counts in sorted(self.days[day][name].items()):
                    yield day, name, model, counts

    def __bool__(self) -> bool:
        return any(not counts.is_zero() for *_, counts in self.rows())

    def copy(self) -> UsageBook:
        book = UsageBook()
        book.merge(self)
        return book

    def to_data(self) -> dict[str, str]:
        """ConfigMap data: one key per day (``YYYY-MM-DD``), compact JSON."""
        data = {}
        for day, tenants in sorted(self.days.items()):
            payload = {
                tenant: {model: counts.to_json() for model, counts in sorted(models.items())}
                for tenant, models in sorted(tenants.items())
            }
            data[day.isoformat()] = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, str] | None) -> UsageBook:
        """The inverse of :meth:`to_data`; keys that are not days, and values that are not what it writes,
        are skipped (a ConfigMap may have been edited by hand)."""
        book = cls()
        for key, value in (data or {}).items():
            try:
                day = date.fromisoformat(key)
                payload = json.loads(value)
            except (TypeError, ValueError):
                continue
            if not isinstance(payload, dict):
                continue
            for tenant, models in payload.items():
                if isinstance(models, dict):
                    for model, counts in models.items():
                        book.add(day, str(tenant), str(model), Counts.from_json(counts))
        return book


def oldest_kept(now: date, retention_days: int) -> date:
    return now - timedelta(days=retention_days - 1)
