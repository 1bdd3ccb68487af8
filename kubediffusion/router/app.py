"""The router's FastAPI app: one OpenAI-compatible Images endpoint in front of every model.

``create_app`` only assembles: the :class:`~.state.RouterState` that owns everything long-lived (its
lifespan is the app's), the route modules of :mod:`.routes`, the error envelope of
``kubediffusion.api.errors``, the OpenAPI document (:mod:`.openapi`, ``/docs``) and the middleware.
The request flow is told in :mod:`.routes.images`; tenants in :mod:`.tenants` and :mod:`.access`, usage
and quotas in :mod:`.usage`, request ids and tracing in :mod:`.requestctx` and :mod:`.tracing`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from kubediffusion.api.bodylimit import BodyLimitMiddleware
from kubediffusion.api.errors import install_error_handlers
from kubediffusion.router.client_address import ClientAddressMiddleware, TrustedProxies
from kubediffusion.router.discovery import Discovery
from kubediffusion.router.forwarding import EDITS_PATH, VARIATIONS_PATH
from kubediffusion.router.ledger import Ledger
from kubediffusion.router.openapi import install_openapi
from kubediffusion.router.requestctx import RequestContextMiddleware
from kubediffusion.router.routes import health, images, legacy, metadata, models, stored, usage
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.state import RouterState, default_discovery
from kubediffusion.router.storage import FilesystemStore, ImageStore
from kubediffusion.router.tracing import Tracer
from kubediffusion.router.wakeup import Scaler


def create_app(
    settings: RouterSettings | None = None,
    *,
    discovery: Discovery | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    store: ImageStore | None = None,
    scaler: Scaler | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    ledger: Ledger | None = None,
    tracer: Tracer | None = None,
) -> FastAPI:
    """The router app. ``transport`` replaces the network for the upstream client (tests); ``scaler``
    wakes models at zero (tests; default: through the API server with Kubernetes discovery);
    ``clock`` drives rate limits and pod ejection, ``wall_clock`` quota days (tests); ``ledger`` keeps
    usage (default: memory, or the ConfigMap of ``usage_configmap``); ``tracer`` replaces the configured one."""
    settings = settings or RouterSettings()
    state = RouterState(
        settings,
        discovery=discovery or default_discovery(settings),
        store=store or FilesystemStore(settings.storage_dir),
        transport=transport,
        scaler=scaler,
        clock=clock,
        wall_clock=wall_clock,
        ledger=ledger,
        tracer=tracer,
    )
    app = FastAPI(
        title="KubeDiffusion router",
        lifespan=state.lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.router = state
    install_error_handlers(app)
    legacy.install_detail_errors(app)
    for module in (health, models, metadata, images, stored, legacy, usage):
        app.include_router(module.router)
    install_openapi(app)
    # Outermost last: the request's id and trace context (on every answer and every log line, CORS
    # preflights included), CORS (its headers go on every answer, the body guard's 413 included), then the
    # client address (so that everything inside it, routes and error handlers' log lines, sees the real
    # client), then the body guard.
    app.add_middleware(
        PathBodyLimit,
        max_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        read_timeout=settings.body_read_timeout,
    )
    app.add_middleware(
        ClientAddressMiddleware, proxies=TrustedProxies(settings.trusted_proxies, settings.forwarded_header)
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # the OpenAI SDKs send more than these (X-Stainless-*, OpenAI-Beta, ...)
            expose_headers=["Retry-After", "X-Request-ID", "X-Image-Id"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, tracer=state.tracer)
    return app


class PathBodyLimit:
    """The shared body guard with two limits: ``upload_bytes`` for the multipart uploads (edits,
    variations: images), ``max_bytes`` for every other body (JSON)."""

    UPLOAD_PATHS = frozenset({EDITS_PATH, VARIATIONS_PATH})

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int, read_timeout: float) -> None:
        self.json = BodyLimitMiddleware(app, max_bytes=max_bytes, read_timeout=read_timeout)
        self.upload = BodyLimitMiddleware(app, max_bytes=upload_bytes, read_timeout=read_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.upload if scope.get("path") in self.UPLOAD_PATHS else self.json
        await guard(scope, receive, send)
