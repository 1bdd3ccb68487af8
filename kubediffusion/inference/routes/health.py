"""Probes and metrics: ``/health`` (alive; 503 once loading failed), ``/readyz`` (loaded and warm; with an
engine, its upstream's health check passing too), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kubediffusion.inference.deps import ServerDep

router = APIRouter()


@router.get("/health")
async def health(server: ServerDep) -> Response:
    if server.phase == "failed":
        raise server.not_ready_error()
    return JSONResponse({"status": "ok", "phase": server.phase})


@router.get("/readyz")
async def readyz(server: ServerDep) -> Response:
    await server.check_ready()
    return JSONResponse({"status": "ready", "model": server.settings.served_name})


@router.get("/metrics")
async def metrics(server: ServerDep) -> Response:
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)
