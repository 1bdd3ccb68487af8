"""The inference server's HTTP app: ``create_app`` assembles an ``InferenceServer`` and the route modules.

The server object (server.py) owns the state and the loading/serving logic; the routes (routes/) are
module-level ``APIRouter``s that reach it through ``deps.ServerDep``. The lifespan only starts and stops it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from kubediffusion.api.bodylimit import BodyLimitMiddleware
from kubediffusion.api.errors import install_error_handlers
from kubediffusion.inference.backend import BackendLoader
from kubediffusion.inference.requestctx import RequestContextMiddleware
from kubediffusion.inference.routes import edits, health, images, models
from kubediffusion.inference.server import EngineFactory, InferenceServer
from kubediffusion.inference.settings import InferenceSettings

IMAGE_PATHS = ("/v1/images/generations", *edits.UPLOAD_PATHS)  # traced, timed and logged one line each


def create_app(
    settings: InferenceSettings,
    loader: BackendLoader | None = None,
    *,
    on_fatal: Callable[[str], None] | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """``loader`` defaults to the diffusers pipeline, ``engine_factory`` to the engine ``settings.engine``
    names; ``on_fatal`` is called with the reason when loading fails."""
    server = InferenceServer(settings, loader, on_fatal=on_fatal, engine_factory=engine_factory)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="KubeDiffusion inference", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.state.server = server
    for group in (images, edits, health, models):
        app.include_router(group.router)
    # Its own guard, not only the router's: a pod is reachable by anything in the cluster network.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        read_timeout=settings.body_read_timeout,
        path_limits={path: settings.max_upload_bytes for path in edits.UPLOAD_PATHS},
    )
    # Outermost: request ids, trace context and compute time for everything inside (docs/observability.md).
    app.add_middleware(
        RequestContextMiddleware,
        tracer=server.tracer,
        traced_paths=IMAGE_PATHS,
        latency=server.metrics.request_seconds,
    )
    return app
