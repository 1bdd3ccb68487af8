"""The older service API this router replaces, so its clients work unchanged: ``/imagine/*``.

* ``POST /imagine/generate`` ``{"prompt", "img_size", "guidance_scale", "num_inference_steps"}`` (all but
  ``prompt`` optional: the default model's defaults) answers the PNG itself (``image/png``). It is a
  generation of one square ``img_size`` x ``img_size`` image by the default model, validated, forwarded
  and counted exactly as ``/v1/images/generations`` is (stored when the deployment stores by default;
  the id is in ``X-Image-Id``). Unknown fields are ignored, as that service's FastAPI models did.
* ``GET /imagine/health`` ``{"status": "healthy"}`` while the default model has a ready pod, else
  ``{"status": "degraded"}`` (200 both: the body says which). Open, like the other probes.
* ``GET /imagine/info``: the default model's name, whether it is loaded, its last error, its defaults
  table (``config``) and its pods' machine (``system_info``), read from each ready pod's ``GET /info``
  (see :func:`system_info` for the units).

Errors on these paths are that API's shape, FastAPI's ``{"detail": "..."}`` (not OpenAI's envelope):
422 for a request that is not valid (FastAPI's status for invalid input, here also for values outside
the model's limits), else the status the same error has on ``/v1`` (401, 429, 503, ...), with its
headers (Retry-After). :class:`DetailErrorsRoute` converts them for this router only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubediffusion.api.errors import APIError, InvalidRequestError, ServiceUnavailableError
from kubediffusion.api.schema import parse_generation_request
from kubediffusion.router.auth import Caller
from kubediffusion.router.deps import AuthenticatedCaller, RateLimitedCaller, StateDep
from kubediffusion.router.exchange import PodRequest, Tally, delivery_for, exchange, require, tally
from kubediffusion.router.forwarding import GENERATIONS_PATH
from kubediffusion.router.routing import ModelEntry, validate_against_model
from kubediffusion.router.state import RouterState
from kubediffusion.router.usage import Cost

log = logging.getLogger(__name__)

PREFIX = "/imagine/"
GIB = 1024**3


def detail_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def from_api_error(exc: APIError) -> JSONResponse:
    status = 422 if isinstance(exc, InvalidRequestError) else exc.status_code
    return detail_response(status, exc.message, exc.headers())


async def from_upstream_error(response: Response) -> Response:
    """A pod's (or the router's) OpenAI envelope, reworded as ``{"detail": ...}`` with the same status
    (422 for a 400) and headers."""
    body = bytes(response.body) if not isinstance(response, StreamingResponse) else b""
    if isinstance(response, StreamingResponse):
        async for chunk in response.body_iterator:
            body += chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = "The model server could not make the image."
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "x-request-id")}
    return detail_response(422 if response.status_code == 400 else response.status_code, message, headers)


class DetailErrorsRoute(APIRoute):
    """Routes whose errors (their dependencies' too: 401, 429) are ``{"detail": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def detail_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as exc:
                return from_api_error(exc)

        return detail_errors


router = APIRouter(route_class=DetailErrorsRoute)


def install_detail_errors(app: FastAPI) -> None:
    """An unknown ``/imagine/...`` path or method gets FastAPI's own ``{"detail": "Not Found"}`` (or
    ``Method Not Allowed``), as that service answered; every other path keeps the app's envelope."""
    envelope = app.exception_handlers[StarletteHTTPException]

    async def http_error(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(PREFIX) and isinstance(exc, StarletteHTTPException):
            return detail_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        response = envelope(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(StarletteHTTPException, http_error)


class LegacyGenerateRequest(BaseModel):
    """The older API's body. ``img_size`` is one side of a square image, in pixels."""

    model_config = ConfigDict(extra="ignore")  # lax, as FastAPI's models are: "512" is 512

    prompt: str
    img_size: Annotated[int, Field(ge=1)] | None = None
    guidance_scale: float | None = None
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None


def parse_legacy(body: bytes) -> LegacyGenerateRequest:
    try:
        return LegacyGenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {first['msg']}") from None


def default_model(state: RouterState, caller: Caller) -> ModelEntry:
    """The default model of the caller's view (:mod:`..access`): one it may not use is no default at all."""
    entry = state.views.table_for(caller.tenant).default
    if entry is None:
        raise ServiceUnavailableError("No default model is configured.", retry_after=5)
    return entry


@router.post("/imagine/generate")
async def imagine_generate(
    request: Request,
    counter: Annotated[Tally, Depends(tally)],
    caller: RateLimitedCaller,
    state: StateDep,
) -> Response:
    legacy = parse_legacy(await request.body())
    entry = default_model(state, caller)
    counter.model = entry.name
    require(entry, "generations")
    payload: dict[str, Any] = {"prompt": legacy.prompt, "model": entry.name, "n": 1, "response_format": "b64_json"}
    if legacy.img_size is not None:
        payload["size"] = f"{legacy.img_size}x{legacy.img_size}"
    if legacy.guidance_scale is not None:
        payload["guidance_scale"] = legacy.guidance_scale
    if legacy.num_inference_steps is not None:
        payload["num_inference_steps"] = legacy.num_inference_steps
    body = json.dumps(payload, ensure_ascii=False).encode()
    parsed = parse_generation_request(body, "application/json")  # the one definition of a valid request
    params = validate_against_model(parsed, entry)
    delivery = delivery_for(request, state, caller=caller, entry=entry, response_format=None, store=None, raw="png")
    await counter.admit(caller, Cost.of_generation(params))
    pod = PodRequest(entry, GENERATIONS_PATH, body, "application/json")
    response = await exchange(request, state, counter, pod, delivery)
    if response.status_code >= 400:
        return await from_upstream_error(response)
    return response


@router.get("/imagine/health")
async def imagine_health(state: StateDep) -> dict[str, str]:
    entry = state.discovery.table().default
    healthy = state.discovery.synced and entry is not None and bool(entry.endpoints)
    return {"status": "healthy" if healthy else "degraded"}


@router.get("/imagine/info")
async def imagine_info(caller: AuthenticatedCaller, state: StateDep) -> dict[str, Any]:
    entry = state.views.table_for(caller.tenant).default
    if entry is None:
        missing = "No default model is configured."
        return {"model": None, "is_loaded": False, "error": missing, "config": None, "system_info": system_info([])}
    infos = await pod_infos(state, entry)
    loaded = [info for info in infos if info.get("phase") == "ready"]
    errors = [str(info["error"]) for info in infos if info.get("error")]
    error = errors[0] if errors else (None if loaded else f"The model '{entry.name}' has no ready replica.")
    width, _ = entry.defaults.width_height
    return {
        "model": entry.name,
        "is_loaded": bool(loaded),
        "error": error,
        "config": {
            "default_steps": entry.defaults.steps,
            "default_guidance": entry.defaults.guidance,
            "min_img_size": entry.limits.min_size,
            "max_img_size": entry.limits.max_size,
            "default": width,
        },
        "system_info": system_info(infos),
    }


async def pod_infos(state: RouterState, entry: ModelEntry) -> list[dict[str, Any]]:
    """Each ready pod's ``GET /info`` (those that do not answer in time are left out, and logged)."""
    timeout = state.settings.pod_info_timeout

    async def one(endpoint: str) -> dict[str, Any] | None:
        try:
            response = await state.client.get(f"{endpoint}/info", timeout=timeout)
            response.raise_for_status()
            info = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("pod %s of model %s: no /info: %s: %s", endpoint, entry.name, type(exc).__name__, exc)
            return None
        return info if isinstance(info, dict) else None

    answers = await asyncio.gather(*(one(endpoint) for endpoint in entry.endpoints))
    return [info for info in answers if info is not None]


def system_info(infos: list[dict[str, Any]]) -> dict[str, float | None]:
    """The pods' machines together: ``cpu_usage`` (percent, the pods' mean), memory and VRAM in GiB
    (summed over pods; None where no pod reports it, e.g. VRAM on CPU pods), ``vram_usage`` (percent
    of the VRAM in use)."""
    systems = [info.get("system") or {} for info in infos]

    def total(key: str) -> float | None:
        values = [s[key] for s in systems if isinstance(s.get(key), int | float)]
        return float(sum(values)) if values else None

    cpus = [float(s["cpuPercent"]) for s in systems if isinstance(s.get("cpuPercent"), int | float)]
    vram_total, vram_free = total("vramTotalBytes"), total("vramFreeBytes")
    usage = None
    if vram_total and vram_free is not None:
        usage = round(100.0 * (vram_total - vram_free) / vram_total, 1)
    return {
        "cpu_usage": round(sum(cpus) / len(cpus), 1) if cpus else None,
        "available_memory": _gib(total("ramAvailableBytes")),
        "total_memory": _gib(total("ramTotalBytes")),
        "total_vram": _gib(vram_total),
        "available_vram": _gib(vram_free),
        "vram_usage": usage,
    }


def _gib(value: float | None) -> float | None:
    return round(value / GIB, 2) if value is not None else None
