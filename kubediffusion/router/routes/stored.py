"""Stored images: ``GET /v1/images/{id}`` (by id, owner only) and ``GET /v1/images/files/{id}`` (the
signed links of ``url`` answers).

``/v1/images/{id}`` needs the API key that stored the image when keys are on: another key, an image
stored while keys were off, an expired image, an image of a model the caller's tenant may no longer use
(:mod:`..access`) and a missing one all get the same 404, so a caller learns nothing about images that
are not its own. With keys off, the id (128 random bits) is the secret.
It answers the image's bytes with their content type, or, for ``Accept: application/json`` without an
image type, ``{"id", "object": "image", "created", "model", "conversation_id", "user", "b64_json"}``.
Images stay until ``url_ttl_seconds`` after they were stored (then the sweeper removes them).
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kubediffusion.api.errors import NotFoundError
from kubediffusion.router.deps import AuthenticatedCaller, StateDep
from kubediffusion.router.negotiation import JSON, parse_accept
from kubediffusion.router.storage import StoredImage

router = APIRouter()

POST_ONLY = frozenset({"generations", "edits", "variations"})
PRIVATE = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def _missing() -> NotFoundError:
    return NotFoundError("No such image (it may have expired).", code="image_not_found")


def wants_json(accept: str | None) -> bool:
    ranges = [media for media, q in parse_accept(accept) if q > 0]
    return JSON in ranges and not any(media.startswith("image/") for media in ranges)


@router.get("/v1/images/files/{image_id}")
async def image_file(state: StateDep, image_id: str, expires: str | None = None, sig: str | None = None) -> Response:
    state.signer.verify(image_id, expires, sig)
    found = await state.store.get(image_id)
    if found is None:
        raise NotFoundError("No such image (it may have been removed after its link expired).", code="image_not_found")
    return Response(found.data, media_type=found.content_type, headers=PRIVATE)


@router.get("/v1/images/{image_id}")
async def stored_image(request: Request, image_id: str, caller: AuthenticatedCaller, state: StateDep) -> Response:
    if image_id in POST_ONLY:  # GET /v1/images/generations is a wrong method, not a missing image
        raise StarletteHTTPException(405)
    found = await state.store.get(image_id)
    if found is None or not _visible(found, caller.key, state.auth.enabled, state.settings.url_ttl_seconds):
        raise _missing()
    if not state.views.may_see(caller.tenant, found.record.model if found.record is not None else None):
        raise _missing()
    if not wants_json(request.headers.get("accept")):
        return Response(found.data, media_type=found.content_type, headers=PRIVATE)
    record = found.record
    assert record is not None  # _visible
    return JSONResponse(
        {
            "id": image_id,
            "object": "image",
            "created": record.created,
            "model": record.model,
            "conversation_id": record.conversation_id,
            "user": record.user,
            "content_type": found.content_type,
            "b64_json": base64.b64encode(found.data).decode(),
        },
        headers={"Cache-Control": "private, max-age=3600"},
    )


def _visible(found: StoredImage, caller: str | None, keys_on: bool, ttl_seconds: int) -> bool:
    record = found.record
    if record is None:  # no record of who stored it: nobody's to fetch by id
        return False
    if keys_on and record.owner != caller:
        return False
    return record.created + ttl_seconds >= time.time()
