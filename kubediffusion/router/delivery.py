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

Decoding an image (a 1024² PNG is ~2 MB of base64) and storing it run in a worker thread, not on the
event loop the router's other requests share. An answer the router changed is written back by
:func:`encode_answer`, which copies the pod's long ``b64_json`` strings in rather than escaping them
again character by character (most of the router's CPU per request, before).

A pod answer that breaks off is a 502 (504 when it stalled past the read timeout); one that is not the
expected JSON is a 502: a pod's bug is never passed on as a success.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from fastapi.responses import Response

from kubediffusion.api.errors import UpstreamTimeoutError
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Upstream
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.negotiation import OutputFormat
from kubediffusion.router.signing import URLSigner, new_image_id
from kubediffusion.router.storage import CONTENT_TYPES, ImageRecord, ImageStore, sniff_format

IMAGE_ID_HEADER = "X-Image-Id"
COPIED_STRING_CHARS = 4096  # a b64_json string at least this long is copied into the answer, not re-encoded
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

    async def keep_item(self, item: dict[str, Any], delivery: Delivery) -> str:
        """Store the image of a ``data[]`` item (its ``b64_json``, decoded off the event loop)."""
        return await self.keep(await asyncio.to_thread(decode_image, item), delivery)


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
            item["id"] = await keeper.keep_item(item, delivery)
            if delivery.response_format == "url":
                del item["b64_json"]
                item["url"] = keeper.signer.url(delivery.base_url, item["id"])
            changed = True
        elif pod_id(item) is None:
            item["id"] = new_image_id()
            changed = True
    if not changed:
        return Response(raw, media_type=upstream.headers.get("content-type", "application/json"))
    return Response(encode_answer(payload, items, escaped=b"\\" in raw), media_type="application/json")


def encode_answer(payload: dict[str, Any], items: list[dict[str, Any]], *, escaped: bool) -> bytes:
    """``payload`` (whose ``data`` is ``items``) as compact JSON, as ``JSONResponse`` writes it.

    When the pod's answer held no escape at all (``escaped`` False: no backslash in it), none of its
    strings has a character JSON must escape (a strict parse refused raw control characters), so its long
    ``b64_json`` strings go in as they are: JSON is written with a marker in their place, then the
    strings are copied between the pieces.
    """
    long = {} if escaped else {i: item["b64_json"] for i, item in enumerate(items) if is_long_string(item)}
    if not long:
        return dumps(payload)
    token = secrets.token_hex(8)  # no pod can guess it: a marker is never mistaken for a pod's own text
    markers = [{**item, "b64_json": f"{token}-{i}"} if i in long else item for i, item in enumerate(items)]
    pieces = re.split(f'"{token}-([0-9]+)"', dumps({**payload, "data": markers}).decode())
    parts: list[bytes] = []
    for n, piece in enumerate(pieces):  # JSON, a marker's number, JSON, ...
        parts += [piece.encode()] if n % 2 == 0 else [b'"', long[int(piece)].encode(), b'"']
    return b"".join(parts)


def is_long_string(item: dict[str, Any]) -> bool:
    value = item.get("b64_json")
    return isinstance(value, str) and len(value) >= COPIED_STRING_CHARS


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def raw_answer(items: list[dict[str, Any]], delivery: Delivery, keeper: Keeper) -> Response:
    if len(items) != 1:
        raise BadGatewayError(f"The model server returned {len(items)} images for a request of one.")
    image = await asyncio.to_thread(decode_image, items[0])
    if delivery.keeps_images:
        image_id = await keeper.keep(image, delivery)
    else:
        image_id = pod_id(items[0]) or new_image_id()
    return Response(
        image,
        media_type=CONTENT_TYPES[sniff_format(image)],
        headers={IMAGE_ID_HEADER: image_id, "X-Content-Type-Options": "nosniff"},
    )
