"""``GET /v1/metadata``: what this service is and what each of its models can do, in one answer.

For the clients of the services this router replaces, which read it once to fill their menus::

    {"service": "kubediffusion", "version": "0.1.0", "default_model": "sdxl-turbo",
     "endpoints": ["/v1/images/generations", ...],
     "models": [{"id", "aliases", "repo", "publisher", "family", "version", "default", "ready",
                 "supports": {"generations": true, "edits": true, "variations": true, "streaming": true},
                 "sizes": {"min": 512, "max": 1024, "default": "512x512"},
                 "steps": {"default": 1, "max": 4}, "guidance": {"default": 0.0},
                 "max_n": 4, "max_prompt_chars": 2000, "presets": ["anime"]}],
     "presets": {"anime": ["sdxl-turbo"]}}

``presets`` maps each style preset (a request's ``style``) to the models that have it. Only the models
the caller's tenant may use are told of (:mod:`..access`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kubediffusion import __version__
from kubediffusion.router.deps import AuthenticatedCaller, StateDep
from kubediffusion.router.routing import CAPABILITIES, ModelEntry

router = APIRouter()  # a key, but no rate limit

SERVICE = "kubediffusion"
ENDPOINTS = (
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/images/{id}",
    "/v1/models",
    "/v1/metadata",
    "/imagine/generate",
    "/imagine/health",
    "/imagine/info",
)


def model_metadata(entry: ModelEntry) -> dict[str, Any]:
    defaults, limits = entry.defaults, entry.limits
    return {
        "id": entry.name,
        "aliases": list(entry.aliases),
        "repo": entry.repo,
        "publisher": entry.info.publisher,
        "family": entry.info.family,
        "version": entry.info.version,
        "default": entry.default,
        "ready": bool(entry.endpoints),
        "supports": {capability: capability in entry.supports for capability in CAPABILITIES},
        "sizes": {"min": limits.min_size, "max": limits.max_size, "default": defaults.size},
        "steps": {"default": defaults.steps, "max": limits.max_steps},
        "guidance": {"default": defaults.guidance},
        "max_n": limits.max_n,
        "max_prompt_chars": limits.max_prompt_chars,
        "presets": sorted(entry.presets),
    }


@router.get("/v1/metadata")
async def metadata(caller: AuthenticatedCaller, state: StateDep) -> dict[str, Any]:
    table = state.views.table_for(caller.tenant)
    presets: dict[str, list[str]] = {}
    for entry in table.models:
        for name in entry.presets:
            presets.setdefault(name, []).append(entry.name)
    return {
        "service": SERVICE,
        "version": __version__,
        "default_model": table.default.name if table.default is not None else None,
        "endpoints": list(ENDPOINTS),
        "models": [model_metadata(entry) for entry in table.models],
        "presets": {name: models for name, models in sorted(presets.items())},
    }
