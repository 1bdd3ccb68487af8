"""``POST /v1/images/edits`` and ``POST /v1/images/variations`` (multipart, OpenAI's fields).

The form is parsed and checked by :mod:`kubediffusion.api.edits` (bounded, images sniffed, not
decoded), resolved against this model's limits, then the images are decoded and resized in a thread;
every failure up to there is a 400 naming the param, and nothing reaches the batcher before it. Each
input image is one job (see the api module for the semantics); the jobs are queued together. Edits
may stream (``stream: true``, ``image_edit.*`` events); variations do not (OpenAI's API has no such
field for them). Bodies of these paths have their own size limit (``max_upload_bytes``).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.edits import EditRequest, parse_edit_request, parse_variation_request, resolve_edit_params
from kubediffusion.api.multipart import MultipartLimits
from kubediffusion.inference.deps import ServerDep
from kubediffusion.inference.engines.base import EngineRequest
from kubediffusion.inference.routes.images import Answer, counted
from kubediffusion.inference.server import InferenceServer
from kubediffusion.inference.streaming import ImageEventStream

router = APIRouter()

EDITS_PATH = "/v1/images/edits"
VARIATIONS_PATH = "/v1/images/variations"
UPLOAD_PATHS = (EDITS_PATH, VARIATIONS_PATH)

Parser = Callable[[bytes, str | None, MultipartLimits | None], EditRequest]


@router.post(EDITS_PATH)
async def edits(request: Request, server: ServerDep) -> Response:
    return await _edit(request, server, parse_edit_request)


@router.post(VARIATIONS_PATH)
async def variations(request: Request, server: ServerDep) -> Response:
    return await _edit(request, server, parse_variation_request)


async def _edit(request: Request, server: InferenceServer, parse: Parser) -> Response:
    async def handle() -> Response | Answer | None:
        body = await request.body()
        edit_request = parse(body, request.headers.get("content-type"), server.multipart_limits)
        adapter = server.check_model(edit_request.model)
        server.check_engine(EngineRequest.of_edit(edit_request))
        edit = resolve_edit_params(
            edit_request,
            server.defaults,
            server.settings.limits,
            pipeline=server.pipeline_options,
            model_adapter=adapter,
        )
        jobs = await server.edit_jobs(edit)
        if edit.params.stream:
            return ImageEventStream(server, "edit", jobs, quality=edit.quality, background=edit.background).response()
        done = await await_unless_disconnected(request, server.run_jobs(jobs))
        return None if done is None else (done.images, {**edit.echo(), **done.echo(server.settings.safety.action)})

    return await counted(server, handle)
