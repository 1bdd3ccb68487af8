"""``POST /v1/images/generations``, ``/v1/images/edits`` and ``/v1/images/variations``.

Each goes: auth -> rate limit (the tenant's) -> parse + validate against the named model (among those
the tenant may use: :mod:`..access`) and its defaults and limits with the shared ``kubediffusion.api``
definitions (bad input, bad images included, never reaches a pod) -> the tenant's quota (its images
counted, or 429 ``insufficient_quota``: :mod:`..usage`) -> forward the client's bytes to the least busy
ready pod (retrying others, see :mod:`..forwarding`) -> the pod's answer to the client (:mod:`..exchange`):
JSON with an ``id`` per image (stored when asked, linked for ``url``), a raw image for ``Accept: image/*``
(:mod:`..negotiation`), or, for ``stream: true``, the pod's events as they come.

``model`` may name one of the model's LoRA adapters, ``<model>:<adapter>``
(:meth:`..routing.RoutingTable.target`), and ``adapters`` list several: names the model lacks are 404
``model_not_found`` here (:mod:`..adapters`). The request is the model's all the same: its pods, its
holding, its usage and metrics labels.

The body the pod gets is the client's own unless the pod must see a field changed (an alias or repo
id becomes the model's name, ``:<adapter>`` kept; ``url`` becomes ``b64_json``; Accept's format becomes
``output_format``): then only those fields are rewritten. A multipart form is re-encoded with the changed
fields and every other part (the images) copied byte for byte; the pod honours nothing but the form
itself, so no header side channel has to be trusted or kept in step.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from kubediffusion.api.edits import EditRequest, Task, parse_edit_request, parse_variation_request, resolve_edit_params
from kubediffusion.api.multipart import MultipartLimits, encode_multipart, replace_fields
from kubediffusion.api.schema import parse_generation_request
from kubediffusion.router.adapters import check_adapters
from kubediffusion.router.auth import Caller
from kubediffusion.router.delivery import Delivery
from kubediffusion.router.deps import RateLimitedCaller, StateDep
from kubediffusion.router.exchange import PodRequest, Tally, delivery_for, exchange, require, tally
from kubediffusion.router.forwarding import EDITS_PATH, GENERATIONS_PATH, VARIATIONS_PATH
from kubediffusion.router.negotiation import raw_format
from kubediffusion.router.relay import json_body, pod_changes
from kubediffusion.router.routing import Target, validate_against_model
from kubediffusion.router.state import RouterState
from kubediffusion.router.usage import Cost

router = APIRouter()


class Asked(Protocol):
    """What generations, edits and variations all ask the same way (read from the JSON or the form)."""

    @property
    def model(self) -> str | None: ...
    @property
    def response_format(self) -> str | None: ...
    @property
    def output_format(self) -> str | None: ...
    @property
    def store(self) -> bool | None: ...
    @property
    def conversation_id(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...


def plan(
    request: Request,
    state: RouterState,
    caller: Caller,
    target: Target,
    asked: Asked,
    *,
    images: int,
    stream: bool,
) -> tuple[Delivery, dict[str, str]]:
    """How the answer reaches the client, and the fields the pod must see changed."""
    raw = raw_format(request.headers.get("accept"), n=images, output_format=asked.output_format, stream=stream)
    delivery = delivery_for(
        request,
        state,
        caller=caller,
        entry=target.entry,
        response_format=asked.response_format,
        store=asked.store,
        conversation_id=asked.conversation_id,
        user=asked.user,
        raw=raw,
    )
    changes = pod_changes(
        model=asked.model,
        entry=target.entry,
        response_format=None if stream else (asked.response_format or state.settings.default_response_format),
        raw=raw,
        output_format=asked.output_format,
        served=target.served_name,
    )
    return delivery, changes


@router.post(GENERATIONS_PATH)
async def generations(
    request: Request,
    counter: Annotated[Tally, Depends(tally)],  # first, so that it sees the caller's 401 or 429
    caller: RateLimitedCaller,
    state: StateDep,
) -> Response:
    body = await request.body()
    with state.tracer.span("route") as span:
        parsed = parse_generation_request(body, request.headers.get("content-type"))
        target = state.views.table_for(caller.tenant).target(parsed.model)
        entry = target.entry
        counter.model = entry.name  # the model's, adapter or not: one label per model
        span.set("model", entry.name)
        stream = bool(parsed.stream)
        require(entry, "generations")
        if stream:
            require(entry, "streaming", param="stream")
        params = validate_against_model(parsed, entry)
        check_adapters(target, parsed.adapters, parsed.model)
        delivery, changes = plan(request, state, caller, target, parsed, images=parsed.n or 1, stream=stream)
        await counter.admit(caller, Cost.of_generation(params))
    pod = PodRequest(entry, GENERATIONS_PATH, json_body(body, changes), "application/json", stream=stream)
    return await exchange(request, state, counter, pod, delivery)


@router.post(EDITS_PATH)
async def edits(
    request: Request, counter: Annotated[Tally, Depends(tally)], caller: RateLimitedCaller, state: StateDep
) -> Response:
    return await upload("edit", request, counter, caller, state)


@router.post(VARIATIONS_PATH)
async def variations(
    request: Request, counter: Annotated[Tally, Depends(tally)], caller: RateLimitedCaller, state: StateDep
) -> Response:
    return await upload("variation", request, counter, caller, state)


def parse_upload(task: Task, body: bytes, content_type: str | None, state: RouterState) -> EditRequest:
    limits = MultipartLimits(max_bytes=state.settings.max_upload_bytes)
    parse = parse_edit_request if task == "edit" else parse_variation_request
    return parse(body, content_type, limits)


async def upload(task: Task, request: Request, counter: Tally, caller: Caller, state: RouterState) -> Response:
    """An edit or a variation: the form checked once here (images included), then forwarded."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    with state.tracer.span("route") as span:
        parsed = parse_upload(task, body, content_type, state)
        target = state.views.table_for(caller.tenant).target(parsed.model)
        entry = target.entry
        counter.model = entry.name  # the model's, adapter or not: one label per model
        span.set("model", entry.name)
        require(entry, "edits" if task == "edit" else "variations")
        if parsed.stream:
            require(entry, "streaming", param="stream")
        params = resolve_edit_params(parsed, entry.defaults, entry.limits)
        fields = parsed.fields
        check_adapters(target, fields.adapters, fields.model)
        delivery, changes = plan(request, state, caller, target, fields, images=params.images, stream=parsed.stream)
        await counter.admit(caller, Cost.of_edit(params))
    if changes:
        body, content_type = encode_multipart(replace_fields(parsed.parts, dict(changes)))
    path = EDITS_PATH if task == "edit" else VARIATIONS_PATH
    pod = PodRequest(entry, path, body, content_type or "", stream=parsed.stream)
    return await exchange(request, state, counter, pod, delivery)
