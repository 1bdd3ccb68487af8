"""The router's FastAPI app: one OpenAI-compatible Images endpoint in front of every model.

``create_app`` only assembles: the :class:`~.state.RouterState` that owns everything long-lived (its
lifespan is the app's), the route modules of :mod:`.routes`, the error envelope of
``kubediffusion.api.errors`` and the middleware. The request flow is told in :mod:`.routes.images`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from kubediffusion.api.bodylimit import BodyLimitMiddleware
from kubediffusion.api.errors import install_error_handlers
from kubediffusion.router.client_address import ClientAddressMiddleware, TrustedProxies
from kubediffusion.router.discovery import Discovery
from kubediffusion.router.routes import health, images, models
from kubediffusion.router.settings import RouterSettings
from kubediffusion.router.state import RouterState, default_discovery
from kubediffusion.router.storage import FilesystemStore, ImageStore


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
    state = RouterState(
        settings,
        discovery=discovery or default_discovery(settings),
        store=store or FilesystemStore(settings.storage_dir),
        transport=transport,
        clock=clock,
    )
    app = FastAPI(
        title="KubeDiffusion router", lifespan=state.lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.router = state
    install_error_handlers(app)
    for module in (health, models, images):
        app.include_router(module.router)
    # Outermost last: CORS (its headers go on every answer, the body guard's 413 included), then the
    # client address (so that everything inside it, routes and error handlers' log lines, sees the real
    # client), then the body guard.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout=settings.body_read_timeout)
    app.add_middleware(
        ClientAddressMiddleware, proxies=TrustedProxies(settings.trusted_proxies, settings.forwarded_header)
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # the OpenAI SDKs send more than these (X-Stainless-*, OpenAI-Beta, ...)
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )
    return app
