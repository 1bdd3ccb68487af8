"""``POST /v1/images/generations`` and the signed ``GET /v1/images/files/{id}`` its url answers link to.

A generation goes: auth -> rate limit -> parse + validate against the named model's defaults and
limits (bad input never reaches a pod) -> forward the body bytes to the least busy ready pod
(retrying others, see :mod:`..forwarding`) -> stream the pod's answer through (``b64_json``), or store
the images and answer signed links (``url``). A client that goes away while its pod works has its
pod request closed too, so the pod drops it from its queue; it is counted as 499, and so is one that
hangs up while still sending its body (logged as one info line by the shared error handlers).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.errors import CLIENT_CLOSED_REQUEST, APIError, NotFoundError
from kubediffusion.api.schema import parse_generation_request
from kubediffusion.router.deps import RateLimitedCaller, SettingsDep, StateDep
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.relay import passthrough, public_base_url, store_and_link, upstream_body, upstream_headers
from kubediffusion.router.routing import validate_against_model

router = APIRouter()


class Tally:
    """Counts one generation request in ``kubediffusion_router_requests_total``, once, whatever ends it."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.model = "unknown"  # until the request names a model we know
        self.started = time.perf_counter()

    def answered(self, status_code: int) -> None:
        self.metrics.requests.labels(self.model, str(status_code)).inc()

    def upstream_answered(self) -> None:
        self.metrics.duration.labels(self.model).observe(time.perf_counter() - self.started)


async def tally(state: StateDep) -> AsyncIterator[Tally]:
    """A dependency with ``yield``: the errors of the dependencies after it (401, 429) and of the route
    (400, 404, 408, 413, 503, ..., a client gone mid-upload) pass through here on their way to the error
    handler, so they are counted."""
    counter = Tally(state.metrics)
    try:
        yield counter
    except APIError as exc:
        counter.answered(exc.status_code)
        raise
    except ClientDisconnect:
        counter.answered(CLIENT_CLOSED_REQUEST)
        raise


@router.post("/v1/images/generations")
async def generations(
    request: Request,
    counter: Annotated[Tally, Depends(tally)],  # first, so that it sees the caller's 401 or 429
    _caller: RateLimitedCaller,
    state: StateDep,
    settings: SettingsDep,
) -> Response:
    body = await request.body()
    parsed = parse_generation_request(body, request.headers.get("content-type"))
    entry = state.discovery.table().resolve(parsed.model)
    counter.model = entry.name
    validate_against_model(parsed, entry)
    response_format = parsed.response_format or settings.default_response_format
    upstream = await await_unless_disconnected(
        request,
        state.forwarder.forward(entry, upstream_body(body, parsed, entry, response_format), upstream_headers(request)),
    )
    if upstream is None:  # the client went away: its pod request was closed, so the pod drops it
        counter.answered(CLIENT_CLOSED_REQUEST)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    counter.upstream_answered()
    if response_format == "url" and upstream.status_code == 200:
        response: Response = await store_and_link(
            upstream,
            store=state.store,
            signer=state.signer,
            metrics=state.metrics,
            base_url=public_base_url(settings, request),
        )
    else:
        response = passthrough(upstream)
    counter.answered(response.status_code)
    return response


@router.get("/v1/images/files/{image_id}")
async def image_file(state: StateDep, image_id: str, expires: str | None = None, sig: str | None = None) -> Response:
    state.signer.verify(image_id, expires, sig)
    found = await state.store.get(image_id)
    if found is None:
        raise NotFoundError("No such image (it may have been removed after its link expired).", code="image_not_found")
    data, content_type = found
    return Response(
        data,
        media_type=content_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
