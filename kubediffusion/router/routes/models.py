"""``GET /v1/models``: the OpenAI model list, with our metadata (aliases, defaults, limits, replicas): the
models the caller's tenant may use (:mod:`..access`), as if there were no others. Each model is followed
by its LoRA adapters, ``<model>:<adapter>`` with ``parent`` and ``adapter``, as its pods list them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kubediffusion.router.deps import AuthenticatedCaller, StateDep

router = APIRouter()  # a key, but no rate limit


@router.get("/v1/models")
async def list_models(caller: AuthenticatedCaller, state: StateDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [item for m in state.views.table_for(caller.tenant).models for item in m.listing()],
    }


@router.get("/v1/models/{model:path}")
async def get_model(model: str, caller: AuthenticatedCaller, state: StateDep) -> dict[str, Any]:
    return state.views.table_for(caller.tenant).target(model).describe()
