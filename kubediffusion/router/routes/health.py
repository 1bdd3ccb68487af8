"""Probes and metrics: open (no API key), cheap, and never touching a pod."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubediffusion.api.errors import ServiceUnavailableError
from kubediffusion.router.deps import StateDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> dict[str, Any]:
    if not state.discovery.synced:
        raise ServiceUnavailableError("Model discovery has not synced yet.", retry_after=1)
    return {"status": "ready", "models": len(state.discovery.table())}


@router.get("/metrics")
async def prometheus(state: StateDep) -> Response:
    table = state.discovery.table()
    state.metrics.models.set(len(table))
    state.metrics.ready_endpoints.set(sum(len(m.endpoints) for m in table.models))
    state.metrics.per_model(table.models)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
