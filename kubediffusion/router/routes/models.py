"""``GET /v1/models``: the OpenAI model list, with our metadata (aliases, defaults, limits, replicas)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from kubediffusion.router.deps import StateDep, authenticated_caller

router = APIRouter(dependencies=[Depends(authenticated_caller)])  # a key, but no rate limit


@router.get("/v1/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    return {"object": "list", "data": [m.describe() for m in state.discovery.table().models]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: StateDep) -> dict[str, Any]:
    return state.discovery.table().resolve(model).describe()
