"""The router's FastAPI app: one OpenAI-compatible Images endpoint in front of every model.

``create_app(settings, discovery=..., transport=...)`` builds it; the lifespan opens the one
shared ``httpx.AsyncClient`` (explicit timeouts, pooled), starts discovery and the expired-image
sweeper, and closes them again. Errors are raised as ``kubediffusion.api.errors`` classes and
rendered once by ``install_error_handlers``.

Request flow for ``POST /v1/images/generations``: auth -> rate limit -> parse + validate against
the named model's defaults/limits (bad input never reaches a pod) -> forward the body bytes to the
least busy ready pod (retrying others, see :mod:`.forwarding`) -> stream the pod's answer through
(``b64_json``), or store the images and answer signed links (``url``). A client that goes away
while its pod works has its pod request closed too, so the pod drops it from its queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.errors import (
    APIError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
    install_error_handlers,
)
from kubediffusion.api.schema import ImageGenerationRequest, parse_generation_request, resolve_params
from kubediffusion.router.auth import APIKeys
from kubediffusion.router.balancer import Balancer
from kubediffusion.router.discovery import Discovery, StaticDiscovery
from kubediffusion.router.errors import BadGatewayError
from kubediffusion.router.forwarding import Forwarder, Upstream
from kubediffusion.router.metrics import RouterMetrics
from kubediffusion.router.middleware import BodyLimitMiddleware
from kubediffusion.router.ratelimit import RateLimiter
from kubediffusion.router.routing import ModelEntry
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.signing import URLSigner
from kubediffusion.router.storage import FilesystemStore, ImageStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 300.0
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer


@dataclass
class RouterState:
    settings: RouterSettings
    discovery: Discovery
    balancer: Balancer
    keys: APIKeys
    limiter: RateLimiter
    signer: URLSigner
    store: ImageStore
    metrics: RouterMetrics
    forwarder: Forwarder | None = None  # set in lifespan, with the shared client


def signing_key(settings: RouterSettings) -> bytes:
    if settings.signing_key_file is not None:
        return settings.signing_key_file.read_bytes().strip()
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    log.warning(
        "no URL signing key configured: using a random one; image links will not survive a restart "
        "or work across router replicas (set KD_ROUTER_SIGNING_KEY_FILE)"
    )
    return secrets.token_bytes(32)


def default_discovery(settings: RouterSettings) -> Discovery:
    if settings.discovery == "static":
        if settings.static_config is None:
            raise ValueError("discovery=static needs KD_ROUTER_STATIC_CONFIG (a YAML file)")
        return StaticDiscovery(settings.static_config)
    from kubediffusion.router.kube_discovery import KubernetesDiscovery  # imports the kubernetes client

    return KubernetesDiscovery.from_settings(settings)


def upstream_timeout(settings: RouterSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=settings.upstream_write_timeout,
        pool=settings.upstream_pool_timeout,
    )


def create_app(
    settings: RouterSettings | None = None,
    *,
    discovery: Discovery | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    store: ImageStore | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The router app. ``transport`` replaces the network for the upstream client (tests);
    ``clock`` drives rate limits and pod ejection (tests)."""
    settings = settings or RouterSettings()
    metrics = RouterMetrics()
    state = RouterState(
        settings=settings,
        discovery=discovery or default_discovery(settings),
        balancer=Balancer(eject_seconds=settings.eject_seconds, clock=clock),
        keys=APIKeys(settings.api_keys_file),
        limiter=RateLimiter(
            rate=settings.rate_limit_rps,
            burst=settings.rate_limit_burst,
            global_rate=settings.global_rate_limit_rps,
            global_burst=settings.global_rate_limit_burst,
            clock=clock,
        ),
        signer=URLSigner(signing_key(settings), ttl_seconds=settings.url_ttl_seconds),
        store=store or FilesystemStore(settings.storage_dir),
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=min(100, settings.upstream_max_connections),
        )
        async with httpx.AsyncClient(
            timeout=upstream_timeout(settings), limits=limits, transport=transport, follow_redirects=False
        ) as client:
            state.forwarder = Forwarder(
                client,
                state.balancer,
                max_attempts=settings.max_attempts,
                retry_read_timeouts=settings.retry_read_timeouts,
                no_endpoint_retry_after=settings.no_endpoint_retry_after,
                on_attempt=lambda model, outcome: metrics.upstream_attempts.labels(model, outcome).inc(),
            )
            await state.discovery.start()
            sweeper = asyncio.create_task(_sweep_forever(state))
            try:
                yield
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
                await state.discovery.stop()
                state.forwarder = None

    app = FastAPI(title="KubeDiffusion router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = state
    install_error_handlers(app)
    # CORS is added last, so it is outermost: its headers go on every answer, the body limit's 413 included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # the OpenAI SDKs send more than these (X-Stainless-*, OpenAI-Beta, ...)
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )

    def authorize(request: Request, *, rate_limit: bool) -> None:
        caller = state.keys.authenticate(request.headers.get("authorization"))
        if rate_limit:
            client_ip = request.client.host if request.client else "unknown"
            state.limiter.check(caller or f"ip:{client_ip}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        if not state.discovery.synced:
            raise ServiceUnavailableError("Model discovery has not synced yet.", retry_after=1)
        return {"status": "ready", "models": len(state.discovery.table())}

    @app.get("/metrics")
    async def prometheus() -> Response:
        table = state.discovery.table()
        metrics.models.set(len(table))
        metrics.ready_endpoints.set(sum(len(m.endpoints) for m in table.models))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request, rate_limit=False)
        return {"object": "list", "data": [m.describe() for m in state.discovery.table().models]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        authorize(request, rate_limit=False)
        return state.discovery.table().resolve(model).describe()

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        started = time.perf_counter()
        label = "unknown"
        try:
            authorize(request, rate_limit=True)
            body = await request.body()
            parsed = parse_generation_request(body, request.headers.get("content-type"))
            entry = state.discovery.table().resolve(parsed.model)
            label = entry.name
            resolve_params(parsed, entry.defaults, entry.limits, dict(entry.presets))
            response_format = parsed.response_format or settings.default_response_format
            assert state.forwarder is not None, "the app's lifespan is not running"
            upstream = await await_unless_disconnected(
                request,
                state.forwarder.forward(
                    entry, upstream_body(body, parsed, entry, response_format), upstream_headers(request)
                ),
            )
            if upstream is None:  # the client went away: its pod request was closed, so the pod drops it
                metrics.requests.labels(label, str(CLIENT_CLOSED_REQUEST)).inc()
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            metrics.duration.labels(label).observe(time.perf_counter() - started)
            metrics.requests.labels(label, str(upstream.status_code)).inc()
            if response_format == "url" and upstream.status_code == 200:
                return await _store_and_link(state, upstream, public_base_url(settings, request))
            return passthrough(upstream)
        except APIError as exc:
            metrics.requests.labels(label, str(exc.status_code)).inc()
            raise

    @app.get("/v1/images/files/{image_id}")
    async def image_file(image_id: str, expires: str | None = None, sig: str | None = None) -> Response:
        state.signer.verify(image_id, expires, sig)
        found = await state.store.get(image_id)
        if found is None:
            raise NotFoundError(
                "No such image (it may have been removed after its link expired).", code="image_not_found"
            )
        data, content_type = found
        return Response(
            data,
            media_type=content_type,
            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    return app


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
    return json.dumps(payload, separators=(",", ":")).encode()


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


async def _store_and_link(state: RouterState, upstream: Upstream, base_url: str) -> JSONResponse:
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
        image_id = await state.store.put(image)
        state.metrics.images_stored.inc()
        item["url"] = state.signer.url(base_url, image_id)
    return JSONResponse(payload)


async def _sweep_forever(state: RouterState) -> None:
    """Delete stored images whose links have expired (plus a minute's grace)."""
    interval = min(SWEEP_INTERVAL_SECONDS, float(state.settings.url_ttl_seconds))
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await state.store.delete_older_than(state.settings.url_ttl_seconds + 60)
            if removed:
                log.info("removed %d expired image(s)", removed)
        except OSError as exc:
            log.warning("sweeping stored images failed: %s", exc)
