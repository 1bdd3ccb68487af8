"""A request's way through the router: the body a pod gets, and the pod's answers passed back as is.

The client's bytes go to the pod unchanged unless the pod needs them changed (:func:`pod_changes`: an
alias or repo id becomes the model's name, ``:<adapter>`` kept; ``url`` becomes ``b64_json``, since the
router makes the links; a raw answer's format named by Accept becomes ``output_format``); then only those
fields are rewritten (:func:`json_body`; multipart bodies in :mod:`.multipart`). The pod's error answers come
back as is (:func:`passthrough`); its successes go through :mod:`.delivery` (JSON) or :mod:`.streaming`
(events).

A successful JSON answer is always read whole (:mod:`.delivery` needs all of it) and sent in one piece.
Any other answer of known length up to :data:`WHOLE_BODY_BYTES` that is not an event stream is too: one
write to the client instead of one per chunk the pod's connection delivered (the same bytes), and a pod
that breaks off before its end is a 502 envelope rather than a cut connection. Anything larger or of
unknown length is relayed chunk by chunk, so the router never holds an unbounded body; events are never
held back.
"""

from __future__ import annotations

import json

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kubediffusion.api.errors import UpstreamTimeoutError
from kubediffusion.api.events import SSE_MEDIA_TYPE
from kubediffusion.api.schema import ImageGenerationRequest
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.negotiation import OutputFormat
from kubediffusion.router.requestctx import REQUEST_ID_HEADER, current_request_id
from kubediffusion.router.routing import ModelEntry
from kubediffusion.router.settings import RouterSettings

WHOLE_BODY_BYTES = 8 * 1024 * 1024  # held in memory at most once per request; pods' error envelopes are far smaller


def pod_changes(
    *,
    model: str | None,
    entry: ModelEntry,
    response_format: str | None,
    raw: OutputFormat | None,
    output_format: str | None,
    served: str | None = None,
) -> dict[str, str]:
    """The fields of the client's request the pod must see changed; empty when the body goes as is.
    ``served``: the name the pod gets for ``model`` (``<model>:<adapter>``), by default the model's own."""
    changes = {}
    served = served or entry.name
    if model is not None and model != served:
        changes["model"] = served
    if response_format == "url":  # the effective one: the request's, else the router's default
        changes["response_format"] = "b64_json"
    if raw is not None and output_format is None and raw != "png":
        changes["output_format"] = raw
    return changes


def json_body(body: bytes, changes: dict[str, str]) -> bytes:
    """``body`` (a JSON object) with ``changes`` applied; the very same bytes when there are none."""
    if not changes:
        return body
    payload = json.loads(body)
    payload.update(changes)
    # Non-ASCII text stays UTF-8 rather than becoming \u escapes (up to three times its size), so the body
    # a pod gets is hardly bigger than the one the router accepted, and fits under the pod's own limit.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def upstream_body(body: bytes, parsed: ImageGenerationRequest, entry: ModelEntry, response_format: str) -> bytes:
    """A generation's body for the pod, for ``response_format`` (the effective one): see :func:`pod_changes`."""
    changes = pod_changes(
        model=parsed.model, entry=entry, response_format=response_format, raw=None, output_format=None
    )
    return json_body(body, changes)


def upstream_headers(request: Request, content_type: str = "application/json") -> dict[str, str]:
    """What a pod gets besides the body: the content type, no compression (the router reads what pods
    answer: ids, stored images, events), and the request's id (the router's, see requestctx.py); the
    trace context is added per attempt (forwarding.py)."""
    headers = {"content-type": content_type, "accept-encoding": "identity"}
    request_id = current_request_id()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


def public_base_url(settings: RouterSettings, request: Request) -> str:
    return settings.public_base_url.rstrip("/") or str(request.base_url).rstrip("/")


def passthrough(upstream: Upstream) -> Response:
    """The pod's answer, as is: streamed when still open, else the buffered body."""
    if upstream.response is None:
        headers = {k: v for k, v in upstream.headers.items() if k not in ("content-encoding", "content-type")}
        return Response(
            upstream.body or b"",
            status_code=upstream.status_code,
            headers=headers,
            media_type=upstream.headers.get("content-type", "application/json"),
        )
    headers = dict(upstream.headers)
    if "content-length" in upstream.response.headers:
        headers["content-length"] = upstream.response.headers["content-length"]
    return PassthroughResponse(upstream, headers)


def sent_whole(headers: dict[str, str]) -> bool:
    """Whether an answer with these headers is read whole before it is sent (see the module docstring)."""
    if headers.get("content-type", "").startswith(SSE_MEDIA_TYPE):
        return False
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) <= WHOLE_BODY_BYTES


async def read_raw(upstream: Upstream) -> bytes:
    """The pod's body as it sent it (not decoded: its content-encoding goes along); lets go of the pod."""
    try:
        return b"".join([chunk async for chunk in upstream.aiter_raw()])
    except httpx.TimeoutException:
        raise UpstreamTimeoutError("The model server stopped sending its answer in time.") from None
    except httpx.HTTPError:
        raise BadGatewayError("The model server's answer broke off before its end.") from None


class PassthroughResponse(StreamingResponse):
    """Sends a pod's body to the client (whole or streamed, see the module docstring) and always lets go
    of the pod afterwards, even when the client disconnects half-way (then the body iterator is
    abandoned, never finished)."""

    def __init__(self, upstream: Upstream, headers: dict[str, str]) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers)
        self.upstream = upstream
        self.whole = sent_whole(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.whole:
                body = await read_raw(self.upstream)  # before the status line: an error is still an envelope
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": body})
            else:
                await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()
