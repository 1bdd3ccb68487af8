"""What the client gets for a pod's successful JSON answer: ids, stored images, links, raw bytes.

Every ``data[]`` item the router returns carries an ``id``. The pod's answer is read whole (one JSON
document; the client could not use half of it anyway) and then:

* a raw image answer (:mod:`.negotiation`) is the one image's bytes, its content type from the bytes
  themselves, its id in ``X-Image-Id``;
* with ``store`` (the request's, else ``KD_ROUTER_STORE_DEFAULT``) or ``response_format=url``, each
  image is stored with an :class:`~.storage.ImageRecord` (owner = the caller's key fingerprint) under a
  fresh id the router chooses (never one a pod sent: a pod cannot choose what a stored id points at);
  ``url`` items get a signed link instead of their ``b64_json``;
* otherwise items keep the ``id`` the pod gave them, or get a fresh one; when every item already had
  one, the pod's bytes go to the client unchanged.

A pod answer that breaks off is a 502 (504 when it stalled past the read timeout); one that is not the
expected JSON is a 502: a pod's bug is never passed on as a success.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from fastapi.responses import JSONResponse, Response

from kubediffusion.api.errors import UpstreamTimeoutError
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.negotiation import OutputFormat
from kubediffusion.router.signing import URLSigner, new_image_id
from kubediffusion.router.storage import CONTENT_TYPES, ImageRecord, ImageStore, sniff_format

IMAGE_ID_HEADER = "X-Image-Id"
POD_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # an id a pod gave is kept only if it is this tame


def pod_id(item: dict[str, Any]) -> str | None:
    given = item.get("id")
    return given if isinstance(given, str) and POD_ID.fullmatch(given) else None


@dataclass(frozen=True)
class Delivery:
    """How one request's images reach its client, decided from the request before it is forwarded."""

    response_format: Literal["url", "b64_json"] = "b64_json"
    store: bool = False
    raw: OutputFormat | None = None
    record: ImageRecord | None = None
    base_url: str = ""

    @property
    def keeps_images(self) -> bool:
        return self.store or self.response_format == "url"


@dataclass(frozen=True)
class Keeper:
    """Where kept images go and how their links are signed (the app's, from RouterState)."""

    store: ImageStore
    signer: URLSigner
    metrics: RouterMetrics

    async def keep(self, image: bytes, delivery: Delivery) -> str:
        image_id = await self.store.put(image, delivery.record, image_id=new_image_id())
        self.metrics.images_stored.inc()
        return image_id


async def read_answer(upstream: Upstream) -> bytes:
    try:
        return await upstream.aread()
    except httpx.TimeoutException:
        raise UpstreamTimeoutError("The model server stopped sending its answer in time.") from None
    except httpx.HTTPError:
        raise BadGatewayError("The model server's answer broke off before its end.") from None


def unreadable() -> BadGatewayError:
    return BadGatewayError("The model server returned a response the router could not read.")


def parse_items(raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        payload = json.loads(raw)
        items = payload["data"]
    except (ValueError, KeyError, TypeError):
        raise unreadable() from None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise unreadable()
    return payload, items


def decode_image(item: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(item["b64_json"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise unreadable() from None


async def deliver(upstream: Upstream, delivery: Delivery, keeper: Keeper) -> Response:
    """The client's answer for the pod's 200 ``upstream`` (see the module docstring)."""
    raw = await read_answer(upstream)
    payload, items = parse_items(raw)
    if delivery.raw is not None:
        return await raw_answer(items, delivery, keeper)
    changed = False
    for item in items:
        if delivery.keeps_images:
            image = decode_image(item)
            item["id"] = await keeper.keep(image, delivery)
            if delivery.response_format == "url":
                del item["b64_json"]
                item["url"] = keeper.signer.url(delivery.base_url, item["id"])
            changed = True
        elif pod_id(item) is None:
            item["id"] = new_image_id()
            changed = True
    if not changed:
        return Response(raw, media_type=upstream.headers.get("content-type", "application/json"))
    return JSONResponse(payload)


async def raw_answer(items: list[dict[str, Any]], delivery: Delivery, keeper: Keeper) -> Response:
    if len(items) != 1:
        raise BadGatewayError(f"The model server returned {len(items)} images for a request of one.")
    image = decode_image(items[0])
    if delivery.keeps_images:
        image_id = await keeper.keep(image, delivery)
    else:
        image_id = pod_id(items[0]) or new_image_id()
    return Response(
        image,
        media_type=CONTENT_TYPES[sniff_format(image)],
        headers={IMAGE_ID_HEADER: image_id, "X-Content-Type-Options": "nosniff"},
    )
