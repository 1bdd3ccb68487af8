"""A generation's way through the router: the body a pod gets, and the answer the client gets back.

The client's bytes go to the pod unchanged unless the pod needs them changed (an alias becomes the
model's name; ``url`` becomes ``b64_json``). The pod's answer comes back as is, streamed
(:func:`passthrough`), except for ``url`` responses, whose images the router stores and replaces
with signed links (:func:`store_and_link`).
"""

from __future__ import annotations

import base64
import binascii
import json

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kubediffusion.api.errors import UpstreamTimeoutError
from kubediffusion.api.schema import ImageGenerationRequest
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.routing import ModelEntry
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.signing import URLSigner
from kubediffusion.router.storage import ImageStore


def upstream_body(body: bytes, parsed: ImageGenerationRequest, entry: ModelEntry, response_format: str) -> bytes:
    """The bytes to send to the pod: the client's own body unless the pod needs it changed (an alias
    becomes the model's name; ``url`` becomes ``b64_json``, which the router turns into links)."""
    rename = parsed.model is not None and parsed.model != entry.name
    change_format = response_format == "url"
    if not rename and not change_format:
        return body
    payload = json.loads(body)
    if rename:
        payload["model"] = entry.name
    payload["response_format"] = "b64_json"
    # Non-ASCII text stays UTF-8 rather than becoming \u escapes (up to three times its size), so the body
    # a pod gets is hardly bigger than the one the router accepted, and fits under the pod's own limit.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def upstream_headers(request: Request) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept-encoding": request.headers.get("accept-encoding", "identity"),
    }
    if "x-request-id" in request.headers:
        headers["x-request-id"] = request.headers["x-request-id"]
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


class PassthroughResponse(StreamingResponse):
    """Streams a pod's body to the client and always lets go of the pod afterwards, even when the
    client disconnects half-way (then the body iterator is abandoned, never finished)."""

    def __init__(self, upstream: Upstream, headers: dict[str, str]) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers)
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()


async def store_and_link(
    upstream: Upstream, *, store: ImageStore, signer: URLSigner, metrics: RouterMetrics, base_url: str
) -> JSONResponse:
    """The pod's ``b64_json`` answer with every image stored and replaced by a signed ``url``."""
    try:
        raw = await upstream.aread()
    except httpx.TimeoutException:
        raise UpstreamTimeoutError("The model server stopped sending its answer in time.") from None
    except httpx.HTTPError:
        raise BadGatewayError("The model server's answer broke off before its end.") from None
    try:
        payload = json.loads(raw)
        items = payload["data"]
        images = [base64.b64decode(item.pop("b64_json"), validate=True) for item in items]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise BadGatewayError("The model server returned a response the router could not read.") from None
    for item, image in zip(items, images, strict=True):
        image_id = await store.put(image)
        metrics.images_stored.inc()
        item["url"] = signer.url(base_url, image_id)
    return JSONResponse(payload)
