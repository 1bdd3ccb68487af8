"""``GET /v1/usage?tenant=&from=&to=``: usage per UTC day, tenant and model, for admins (docs/tenancy.md).

Only a tenant with ``admin: true`` may read it (another caller gets 403 ``permission_denied``; with
authentication off it is open, like everything else). ``from`` and ``to`` are ISO dates (``2025-01-31``),
both included; ``to`` defaults to today (UTC), ``from`` to the oldest day kept (``KD_ROUTER_USAGE_RETENTION_DAYS``
before ``to``); ``tenant`` (default: all) picks one. A bad value is a 400 naming the parameter::

    {"object": "usage", "scope": "cluster" | "replica", "from": "2025-01-01", "to": "2025-01-31",
     "tenant": null,
     "data": [{"date": "2025-01-31", "tenant": "team-a", "model": "tiny-sd", "requests": 3, "images": 4,
               "failed_requests": 1, "megapixels": 1.05, "denoising_steps": 16, "gpu_seconds": 2.5}],
     "totals": [{"tenant": "team-a", "requests": 3, "images": 4, ...}]}

``scope`` says whose counts these are: every replica's (a shared ledger) or the answering replica's only
(:mod:`..ledger`). ``images`` includes the images of requests still being served (counted when admitted).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from kubediffusion.api.errors import InvalidRequestError
from kubediffusion.router.deps import AuthenticatedCaller, StateDep
from kubediffusion.router.errors import PermissionDeniedError
from kubediffusion.router.usagebook import Counts, oldest_kept, utc_day

router = APIRouter()

MAX_DAYS = 400


def parse_day(value: str | None, param: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid value for '{param}': expected a date as YYYY-MM-DD.", param=param, code="invalid_value"
        ) from None


def counts_json(counts: Counts) -> dict[str, Any]:
    values = asdict(counts)
    values["megapixels"] = round(values["megapixels"], 6)
    values["gpu_seconds"] = round(values["gpu_seconds"], 6)
    return values


@router.get("/v1/usage")
async def usage(
    caller: AuthenticatedCaller,
    state: StateDep,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    first: Annotated[str | None, Query(alias="from", max_length=32)] = None,
    last: Annotated[str | None, Query(alias="to", max_length=32)] = None,
) -> dict[str, Any]:
    if state.auth.enabled and not caller.tenant.admin:
        raise PermissionDeniedError("Reading usage needs an admin key (a tenant with admin: true).")
    today = utc_day(state.meter.clock())
    to_day = parse_day(last, "to") or today
    from_day = parse_day(first, "from") or oldest_kept(to_day, state.settings.usage_retention_days)
    if from_day > to_day:
        raise InvalidRequestError("'from' is after 'to'.", param="from", code="invalid_value")
    if to_day - from_day > timedelta(days=MAX_DAYS):
        raise InvalidRequestError(f"At most {MAX_DAYS} days at once.", param="from", code="invalid_value")
    book = await state.ledger.book()
    data = []
    totals: dict[str, Counts] = {}
    for day, name, model, counts in book.rows(tenant or None, from_day, to_day):
        data.append({"date": day.isoformat(), "tenant": name, "model": model, **counts_json(counts)})
        totals.setdefault(name, Counts()).add(counts)
    return {
        "object": "usage",
        "scope": state.ledger.scope,
        "from": from_day.isoformat(),
        "to": to_day.isoformat(),
        "tenant": tenant or None,
        "data": data,
        "totals": [{"tenant": name, **counts_json(counts)} for name, counts in sorted(totals.items())],
    }
