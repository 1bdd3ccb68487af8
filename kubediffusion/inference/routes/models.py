"""What this server serves: ``/v1/models`` (OpenAI's list shape) and ``/info`` (model, config, machine).

``/v1/models`` lists the model, then one entry per LoRA adapter, ``<model>:<adapter>``, with ``parent``
naming the model (vLLM's shape for its LoRA modules) and the adapter's default scale.

The machine's CPU and RAM figures come from psutil, part of the ``inference`` extra; the base install
(the stub and the adapters) answers them as null.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from kubediffusion.inference.deps import ServerDep
from kubediffusion.inference.server import InferenceServer

router = APIRouter()


def model_card(server: InferenceServer) -> dict[str, Any]:
    settings = server.settings
    description = server.description
    return {
        "id": settings.served_name,
        "object": "model",
        "created": int(server.started_at),
        "owned_by": "kubediffusion",
        "aliases": list(settings.aliases),
        "ready": server.phase == "ready",
        "smoke_test": server.smoke_test,
        "pipeline": description.pipeline_class if description else None,
        "engine": settings.engine,
        "supports": supports(server),
        "adapters": [adapter.name for adapter in settings.adapters],
    }


def adapter_cards(server: InferenceServer) -> list[dict[str, Any]]:
    name = server.settings.served_name
    return [
        {
            "id": f"{name}:{adapter.name}",
            "object": "model",
            "created": int(server.started_at),
            "owned_by": "kubediffusion",
            "parent": name,
            "adapter": {"name": adapter.name, "defaultScale": adapter.default_scale},
            "ready": server.phase == "ready",
        }
        for adapter in server.settings.adapters
    ]


def pipeline_info(server: InferenceServer) -> dict[str, Any]:
    """Adapters, scheduler, component overrides and safety as configured and as loaded (the terms are
    counted, not listed)."""
    settings, description = server.settings, server.description
    return {
        "adapters": [adapter.model_dump(by_alias=True) for adapter in settings.adapters],
        "scheduler": {
            **settings.scheduler.model_dump(by_alias=True),
            "default": description.scheduler if description else None,
        },
        "components": {name: config.model_dump(by_alias=True) for name, config in settings.components.items()},
        "safety": {
            "checker": settings.safety.checker,
            "loadedChecker": description.safety_checker if description else None,
            "action": settings.safety.action,
            "blockedTerms": len(settings.safety.blocked_terms),
            "allowLowModeration": settings.safety.allow_low_moderation,
        },
    }


def supports(server: InferenceServer) -> dict[str, bool]:
    """What this pod can do (the router's ``/v1/metadata`` names the same capabilities); unknown until loaded."""
    description = server.description
    kinds = description.edit_kinds if description else ()
    return {
        "generations": description is not None,
        "edits": "img2img" in kinds,
        "variations": "img2img" in kinds,
        "inpainting": "inpaint" in kinds,
        "streaming": description is not None,
        "partial_images": bool(description and description.previews),
    }


@router.get("/v1/models")
async def models(server: ServerDep) -> Response:
    return JSONResponse({"object": "list", "data": [model_card(server), *adapter_cards(server)]})


@router.get("/info")
async def info(server: ServerDep) -> Response:
    settings, backend, batcher = server.settings, server.backend, server.batcher
    description = server.description
    vram = backend.vram() if backend is not None else None
    return JSONResponse(
        {
            "model": model_card(server),
            "phase": server.phase,
            "error": server.error,
            "smoke_test": server.smoke_test,
            "model_dir": None if server.uses_engine else str(settings.model_dir),
            "device": description.device if description else None,
            "dtype": description.dtype if description else settings.dtype,
            "compiled": description.compiled if description else False,
            "previews": description.previews if description else None,
            "defaults": server.defaults.model_dump(by_alias=True),
            "limits": settings.limits.model_dump(by_alias=True),
            "presets": {name: p.model_dump(by_alias=True) for name, p in settings.presets.items()},
            "serving": {
                "maxBatchSize": settings.max_batch_size,
                "batchWindowMs": settings.batch_window_ms,
                "maxQueue": settings.max_queue,
                "queuedImages": batcher.queued_images,
                "runningImages": batcher.running_images,
            },
            "engine": engine_info(server),
            "pipeline": pipeline_info(server),
            "system": {
                **machine(),
                "vramTotalBytes": vram[1] if vram else None,
                "vramFreeBytes": vram[0] if vram else None,
            },
            "uptimeSeconds": round(time.time() - server.started_at, 3),
        }
    )


def engine_info(server: InferenceServer) -> dict[str, Any]:
    settings, runner = server.settings, server.runner
    if not server.uses_engine:
        return {"name": settings.engine}
    return {
        "name": settings.engine,
        "url": settings.engine_url or None,
        "model": settings.engine_model or None,
        "timeoutSeconds": settings.engine_timeout_seconds,
        "healthy": runner.healthy if runner is not None else False,
        "reason": runner.reason if runner is not None else None,
    }


def machine() -> dict[str, Any]:
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        return {"cpuPercent": None, "cpuCount": None, "ramTotalBytes": None, "ramAvailableBytes": None}
    memory = psutil.virtual_memory()
    return {
        "cpuPercent": psutil.cpu_percent(interval=None),
        "cpuCount": psutil.cpu_count(),
        "ramTotalBytes": memory.total,
        "ramAvailableBytes": memory.available,
    }
