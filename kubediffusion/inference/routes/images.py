"""``POST /v1/images/generations``: the OpenAI Images API in front of the server's batcher.

Requests are answered only for ``model`` null, the served name or one of its aliases, or one of those
with an adapter (``<model>:<adapter>``; else 404 ``model_not_found``). Blocked terms, adapters and the
scheduler are checked before anything is queued (a blocked prompt never reaches the batcher).
``response_format=url`` is accepted and answered with ``b64_json``: storing images and signing URLs is
the router's job, and the router asks pods for b64_json. ``stream: true``
answers Server-Sent Events (:mod:`..streaming`), queued before the 200 so that a full queue is still a
JSON 429. A client that hangs up is dropped from the queue and counted as ``disconnected`` (status 499,
which nobody reads), and so is one that hangs up while still sending its body (logged as one info line
by the shared error handlers, not as an error). With an engine other than diffusers, a field the engine
cannot honour is a 400 naming it, before the request is queued. Edits and variations: :mod:`.edits`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.errors import (
    CLIENT_CLOSED_REQUEST,
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
    ModerationBlockedError,
    QueueFullError,
    ServiceUnavailableError,
)
from kubediffusion.api.schema import (
    ImageData,
    ImagesResponse,
    now_seconds,
    parse_generation_request,
    resolve_params,
    response_echo,
)
from kubediffusion.inference.deps import ServerDep
from kubediffusion.inference.engines.base import EngineRequest
from kubediffusion.inference.server import InferenceServer
from kubediffusion.inference.streaming import ImageEventStream

router = APIRouter()

Answer = tuple[list[str], dict[str, Any]]
"""A finished request: its base64 images, in order, and the fields its response echoes (and ``moderation``)."""


@router.post("/v1/images/generations")
async def generations(request: Request, server: ServerDep) -> Response:
    async def handle() -> Response | Answer | None:
        body = await request.body()
        image_request = parse_generation_request(body, request.headers.get("content-type"))
        adapter = server.check_model(image_request.model)
        engine_request = EngineRequest.of_generation(image_request)
        server.check_engine(engine_request)
        params = resolve_params(
            image_request,
            server.defaults,
            server.settings.limits,
            server.settings.presets,
            pipeline=server.pipeline_options,
            model_adapter=adapter,
        )
        if params.stream:
            stream = ImageEventStream(
                server,
                "generation",
                server.generation_jobs(params, engine_request),
                quality=image_request.quality,
                background=image_request.background,
            )
            return stream.response()
        done = await await_unless_disconnected(request, server.generate(params, engine_request))
        if done is None:
            return None
        return done.images, {**response_echo(image_request, params), **done.echo(server.settings.safety.action)}

    return await counted(server, handle)


async def counted(server: InferenceServer, handle: Callable[[], Awaitable[Response | Answer | None]]) -> Response:
    """Run a route's work and count its outcome once; None means the client went away, a Response (a
    stream) counts itself when it ends."""
    requests = server.metrics.requests
    try:
        answer = await handle()
    except APIError as exc:
        requests.labels(outcome(exc)).inc()
        if isinstance(exc, ModerationBlockedError) and exc.stage == "input":
            server.metrics.blocked_prompts.inc()
        raise
    except (asyncio.CancelledError, ClientDisconnect):
        requests.labels("disconnected").inc()
        raise
    except Exception:
        requests.labels("error").inc()
        raise
    if isinstance(answer, Response):
        return answer
    if answer is None:
        requests.labels("disconnected").inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    requests.labels("success").inc()
    encoded, echo = answer
    response = ImagesResponse(created=now_seconds(), data=[ImageData(b64_json=b64) for b64 in encoded], **echo)
    return JSONResponse(response.model_dump(exclude_none=True))


def outcome(error: APIError) -> str:
    """The ``outcome`` label of ``kubediffusion_inference_requests_total`` for a request that failed."""
    if isinstance(error, QueueFullError):
        return "queue_full"
    if isinstance(error, ModelNotFoundError):
        return "model_not_found"
    if isinstance(error, ModerationBlockedError):
        return "moderation_blocked"
    if isinstance(error, ServiceUnavailableError):
        return "not_ready"
    if isinstance(error, InvalidRequestError) or error.status_code < 500:
        return "invalid"
    return "error"
