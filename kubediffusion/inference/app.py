"""The inference server's HTTP app: OpenAI Images API in front of the batcher and one backend.

``create_app(settings, loader)`` builds it; ``lifespan`` starts the batcher and, in the background,
loads the model and makes one warm-up image in the worker thread, so ``/health`` answers at once and
``/readyz`` is 503 until the model is warm. A load failure puts the server in phase ``failed``
(``/health`` and ``/readyz`` 503 with the reason) and calls ``on_fatal`` (``main`` exits non-zero).

``response_format=url`` is accepted and answered with ``b64_json``: storing images and signing URLs is
the router's job, and the router asks pods for b64_json. Requests are answered only for ``model`` null,
the served name or one of its aliases (else 404 ``model_not_found``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kubediffusion.api.disconnect import await_unless_disconnected
from kubediffusion.api.errors import (
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
    QueueFullError,
    ServiceUnavailableError,
    install_error_handlers,
)
from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.api.schema import (
    MAX_SEED,
    GenerationParams,
    ImageData,
    ImagesResponse,
    now_seconds,
    parse_generation_request,
    resolve_params,
    response_echo,
)
from kubediffusion.inference.backend import BackendLoader, ImageBackend, ImageJob, ModelLoadError
from kubediffusion.inference.batcher import Batcher
from kubediffusion.inference.encoding import encode_image, to_b64
from kubediffusion.inference.metrics import InferenceMetrics
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import read_smoke_test_marker

log = logging.getLogger(__name__)

Phase = Literal["loading", "warming", "ready", "failed"]
NOT_READY_RETRY_AFTER = 5.0
WARMUP_MAX_STEPS = 2


@dataclass
class ServerState:
    phase: Phase = "loading"
    error: str | None = None
    backend: ImageBackend | None = None
    started_at: float = 0.0
    ready_at: float | None = None


def effective_defaults(settings: InferenceSettings, marker: dict[str, Any] | None) -> GenerationDefaults:
    """Configured defaults; for the tiny model without configured ones, the marker's (64x64, 2 steps)."""
    if "defaults" in settings.model_fields_set or marker is None or not isinstance(marker.get("defaults"), dict):
        return settings.defaults
    return GenerationDefaults.model_validate(marker["defaults"])


def batch_key(job: ImageJob) -> tuple[Any, ...]:
    # Empty and non-empty negative prompts are not mixed: SDXL encodes "" differently from none.
    return (*job.params.batch_key, job.params.negative_prompt == "")


def _load_default_backend(settings: InferenceSettings) -> ImageBackend:
    from kubediffusion.inference.pipeline import load_backend  # imports torch only when really loading

    return load_backend(settings)


def create_app(
    settings: InferenceSettings,
    loader: BackendLoader | None = None,
    *,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    load = loader or _load_default_backend
    marker = read_smoke_test_marker(settings.model_dir)
    defaults = effective_defaults(settings, marker)
    names = {settings.served_name, *settings.aliases}
    metrics = InferenceMetrics()
    state = ServerState(started_at=time.time())
    holder: dict[str, Batcher[ImageJob, list[str]]] = {}

    def run_batch(jobs: list[ImageJob]) -> list[list[str]]:
        """In the worker thread: generate, then encode (PNG/JPEG/WebP + base64) off the event loop."""
        backend = state.backend
        if backend is None:
            raise ServiceUnavailableError("The model is not loaded.", retry_after=NOT_READY_RETRY_AFTER)
        images = backend.generate(jobs, on_step=metrics.step_seconds.observe)
        return [
            [to_b64(encode_image(image, job.params.output_format, job.params.output_compression)) for image in imgs]
            for job, imgs in zip(jobs, images, strict=True)
        ]

    def on_batch(images: int, _seconds: float) -> None:
        metrics.batch_size.observe(images)
        metrics.images.inc(images)

    def warm_up(backend: ImageBackend) -> None:
        width, height = defaults.width_height
        params = GenerationParams(
            prompt="warm-up",
            negative_prompt="",
            n=1,
            width=width,
            height=height,
            steps=min(defaults.steps, WARMUP_MAX_STEPS),
            guidance=defaults.guidance,
            seed=0,
            output_format="png",
            output_compression=100,
        )
        # Compiled pipelines compile per batch shape: warm every batch size the batcher can form.
        sizes = range(1, settings.max_batch_size + 1) if backend.description.compiled else (1,)
        for n in sizes:
            job = ImageJob(params=dataclasses.replace(params, n=n), seeds=tuple(range(n)))
            started = time.monotonic()
            images = backend.generate([job])
            if len(images) != 1 or len(images[0]) != n:
                raise RuntimeError(f"warm-up returned {len(images[0]) if images else 0} images, expected {n}")
            encode_image(images[0][0], "png")
            log.info("warm-up batch of %d at %dx%d took %.2fs", n, width, height, time.monotonic() - started)

    async def load_and_warm(batcher: Batcher[ImageJob, list[str]]) -> None:
        try:
            backend: ImageBackend = await batcher.run_exclusive(lambda: load(settings))
            state.backend = backend
            if settings.warmup:
                state.phase = "warming"
                await batcher.run_exclusive(lambda: warm_up(backend))
        except Exception as exc:
            state.phase = "failed"
            state.error = str(exc) or type(exc).__name__
            log.error("model failed to load: %s", state.error, exc_info=not isinstance(exc, ModelLoadError))
            if on_fatal is not None:
                on_fatal(state.error)
            return
        state.phase = "ready"
        state.ready_at = time.time()
        metrics.ready.set(1)
        log.info("ready: serving %s (%s)", settings.served_name, ", ".join(sorted(names)))

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        batcher: Batcher[ImageJob, list[str]] = Batcher(
            run_batch,
            key=batch_key,
            size=lambda job: len(job.seeds),
            max_batch_size=settings.max_batch_size,
            batch_window_s=settings.batch_window_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=on_batch,
        )
        holder["batcher"] = batcher
        app_.state.batcher = batcher
        metrics.queue_depth.set_function(lambda: batcher.queued_images)
        batcher.start()
        loading = asyncio.create_task(load_and_warm(batcher), name="kd-load")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await batcher.stop()
            if state.backend is not None:
                state.backend.close()
                state.backend = None

    app = FastAPI(title="KubeDiffusion inference", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.server = state
    app.state.metrics = metrics

    def not_ready() -> ServiceUnavailableError:
        if state.phase == "failed":
            return ServiceUnavailableError(f"The model failed to load: {state.error}", code="model_load_failed")
        return ServiceUnavailableError(
            f"The model is {state.phase}; try again shortly.", code="model_not_ready", retry_after=NOT_READY_RETRY_AFTER
        )

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        try:
            body = await request.body()
            image_request = parse_generation_request(body, request.headers.get("content-type"))
            if image_request.model is not None and image_request.model not in names:
                raise ModelNotFoundError(image_request.model)
            params = resolve_params(image_request, defaults, settings.limits, settings.presets)
            if state.phase != "ready":
                raise not_ready()
            batcher = holder["batcher"]
            base = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED - 64)
            job = ImageJob(params=params, seeds=tuple(base + i for i in range(params.n)))
            encoded = await await_unless_disconnected(request, batcher.submit(job))  # gone: dropped from the queue
        except APIError as exc:
            metrics.requests.labels(_outcome(exc)).inc()
            raise
        except asyncio.CancelledError:
            metrics.requests.labels("disconnected").inc()
            raise
        except Exception:
            metrics.requests.labels("error").inc()
            raise
        if encoded is None:
            metrics.requests.labels("disconnected").inc()
            return Response(status_code=499)
        metrics.requests.labels("success").inc()
        response = ImagesResponse(
            created=now_seconds(),
            data=[ImageData(b64_json=b64) for b64 in encoded],
            **response_echo(image_request, params),
        )
        return JSONResponse(response.model_dump(exclude_none=True))

    @app.get("/health")
    async def health() -> Response:
        if state.phase == "failed":
            raise not_ready()
        return JSONResponse({"status": "ok", "phase": state.phase})

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.phase != "ready":
            raise not_ready()
        return JSONResponse({"status": "ready", "model": settings.served_name})

    def model_card() -> dict[str, Any]:
        description = state.backend.description if state.backend is not None else None
        return {
            "id": settings.served_name,
            "object": "model",
            "created": int(state.started_at),
            "owned_by": "kubediffusion",
            "aliases": list(settings.aliases),
            "ready": state.phase == "ready",
            "smoke_test": marker is not None,
            "pipeline": description.pipeline_class if description else None,
        }

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/info")
    async def info() -> Response:
        backend = state.backend
        description = backend.description if backend is not None else None
        memory = psutil.virtual_memory()
        vram = backend.vram() if backend is not None else None
        batcher = holder.get("batcher")
        return JSONResponse(
            {
                "model": model_card(),
                "phase": state.phase,
                "error": state.error,
                "smoke_test": marker is not None,
                "model_dir": str(settings.model_dir),
                "device": description.device if description else None,
                "dtype": description.dtype if description else settings.dtype,
                "compiled": description.compiled if description else False,
                "defaults": defaults.model_dump(by_alias=True),
                "limits": settings.limits.model_dump(by_alias=True),
                "presets": {name: p.model_dump(by_alias=True) for name, p in settings.presets.items()},
                "serving": {
                    "maxBatchSize": settings.max_batch_size,
                    "batchWindowMs": settings.batch_window_ms,
                    "maxQueue": settings.max_queue,
                    "queuedImages": batcher.queued_images if batcher else 0,
                    "runningImages": batcher.running_images if batcher else 0,
                },
                "system": {
                    "cpuPercent": psutil.cpu_percent(interval=None),
                    "cpuCount": psutil.cpu_count(),
                    "ramTotalBytes": memory.total,
                    "ramAvailableBytes": memory.available,
                    "vramTotalBytes": vram[1] if vram else None,
                    "vramFreeBytes": vram[0] if vram else None,
                },
                "uptimeSeconds": round(time.time() - state.started_at, 3),
            }
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _outcome(error: APIError) -> str:
    if isinstance(error, QueueFullError):
        return "queue_full"
    if isinstance(error, ModelNotFoundError):
        return "model_not_found"
    if isinstance(error, ServiceUnavailableError):
        return "not_ready"
    if isinstance(error, InvalidRequestError) or error.status_code < 500:
        return "invalid"
    return "error"
