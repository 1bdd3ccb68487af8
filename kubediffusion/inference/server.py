"""``InferenceServer``: the long-lived state of one model server, and its life from loading to shutdown.

It owns the settings, the effective defaults, the names it answers to, the metrics, the phase, the
backend, the batcher and the preview encoder (a thread of its own, see :mod:`.streaming`). ``start()``
(the app's lifespan) starts the batcher and, in the background, loads the model and makes warm-up
images in the batcher's worker thread, so ``/health`` answers at once and ``/readyz`` is 503 until the
model is warm. A load failure puts the server in phase ``failed``
(``/health`` and ``/readyz`` 503 with the reason) and calls ``on_fatal`` (``main`` exits non-zero).
The HTTP routes (``inference/routes``) only read this object and call its methods.

With another engine (``settings.engine``, :mod:`.engines`) the same server runs an ``EngineRunner``
instead of a backend: the batcher awaits it in the event loop, edits reach it undecoded
(``EditUpload``), it refuses the fields it cannot honour before anything is queued, and the phase is
``warming`` until the engine's health check first succeeds; from then on ``/readyz`` follows that check.
No warm-up image is made upstream (it would cost the engine a generation per pod start).

Pipeline options (docs/pipelines.md): ``pipeline_options`` resolves a request's adapters (also the
model name ``<model>:<adapter>``), scheduler and blocked terms before it is queued; after each batch,
the images pass the model's safety checker and action (:mod:`.moderation`), so a job's result is a
``JobImages`` (its images and what moderation did).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from kubediffusion.api.edits import EditParams
from kubediffusion.api.errors import InvalidRequestError, ServiceUnavailableError
from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.api.multipart import MultipartLimits
from kubediffusion.api.pipelines import PipelineOptions
from kubediffusion.api.schema import MAX_SEED, GenerationParams
from kubediffusion.inference.backend import (
    BackendDescription,
    BackendLoader,
    EditInput,
    EditUpload,
    ImageBackend,
    ImageChecking,
    ImageJob,
    ModelLoadError,
)
from kubediffusion.inference.batcher import Batcher
from kubediffusion.inference.compilecache import CompileCache, freeze_shapes
from kubediffusion.inference.encodepool import EncodePool
from kubediffusion.inference.encoding import encode_image
from kubediffusion.inference.engines.base import Engine, EngineRequest, upload_of
from kubediffusion.inference.engines.runner import EngineRunner
from kubediffusion.inference.inputs import prepare_all
from kubediffusion.inference.metrics import InferenceMetrics
from kubediffusion.inference.moderation import JobImages, moderate
from kubediffusion.inference.phases import PhaseClock
from kubediffusion.inference.requestctx import Batch
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.inference.tracing import make_tracer
from kubediffusion.inference.warmup import warm_guidances, warm_sizes, warm_up
from kubediffusion.tinymodel import read_smoke_test_marker

log = logging.getLogger(__name__)

Phase = Literal["loading", "warming", "ready", "failed"]
NOT_READY_RETRY_AFTER = 5.0
ENGINE_RETRY_S = 1.0  # between health checks of an engine that is not up yet
EngineFactory = Callable[[InferenceSettings], Engine]


def effective_defaults(settings: InferenceSettings, marker: dict[str, Any] | None) -> GenerationDefaults:
    """Configured defaults; for the tiny model without configured ones, the marker's (64x64, 2 steps)."""
    if "defaults" in settings.model_fields_set or marker is None or not isinstance(marker.get("defaults"), dict):
        return settings.defaults
    return GenerationDefaults.model_validate(marker["defaults"])


def batch_key(job: ImageJob) -> tuple[Any, ...]:
    """Jobs with equal keys share one pipeline call: same shape and settings, same task kind and, for
    edits, the same strength and input size (the inputs are passed as lists). The output format and
    quality are not part of it: each image is encoded on its own, after the call (:mod:`.encodepool`)."""
    # Empty and non-empty negative prompts are not mixed: SDXL encodes "" differently from none.
    key: tuple[Any, ...] = (*job.params.batch_key, job.params.negative_prompt == "", job.kind)
    if job.source is not None:
        key += (job.source.strength, job.source.image.size)
    return key


def engine_batch_key(job: ImageJob) -> tuple[Any, ...]:
    """An engine's jobs are separate upstream calls: any of them can share a batch."""
    return ()


def _load_default_backend(settings: InferenceSettings) -> ImageBackend:
    from kubediffusion.inference.pipeline import load_backend  # imports torch only when really loading

    return load_backend(settings)


def _create_engine(settings: InferenceSettings) -> Engine:
    from kubediffusion.inference.engines import create_engine

    return create_engine(settings)


class InferenceServer:
    """One model behind one batcher. ``start()`` and ``stop()`` run inside the event loop."""

    def __init__(
        self,
        settings: InferenceSettings,
        loader: BackendLoader | None = None,
        *,
        on_fatal: Callable[[str], None] | None = None,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.settings = settings
        self.uses_engine = settings.engine != "diffusers"
        self.marker = None if self.uses_engine else read_smoke_test_marker(settings.model_dir)
        self.defaults = effective_defaults(settings, self.marker)
        self.names = frozenset({settings.served_name, *settings.aliases})
        self.pipeline_options = PipelineOptions.of(settings.adapters, settings.scheduler, settings.safety)
        self.metrics = InferenceMetrics()
        self.phase: Phase = "loading"
        self.error: str | None = None
        self.backend: ImageBackend | None = None
        self.runner: EngineRunner | None = None
        self.started_at = time.time()
        self.ready_at: float | None = None
        self._load = loader or _load_default_backend
        self._make_engine = engine_factory or _create_engine
        self._on_fatal = on_fatal
        self._loading: asyncio.Task[None] | None = None
        self.batcher: Batcher[ImageJob, JobImages] = Batcher(
            self._run_engine_batch if self.uses_engine else self._run_batch,
            key=engine_batch_key if self.uses_engine else batch_key,
            size=lambda job: len(job.seeds),
            max_batch_size=settings.max_batch_size,
            batch_window_s=settings.batch_window_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=self._on_batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.queued_images)
        self.metrics.running_images.set_function(lambda: self.batcher.running_images)
        self.metrics.gpu_memory.source = lambda: self.backend.vram() if self.backend is not None else None
        self.tracer = make_tracer(settings.otlp_endpoint, model=settings.served_name)  # docs/observability.md
        self.multipart_limits = MultipartLimits(max_bytes=settings.max_upload_bytes)
        # Partial images are encoded here, in order, so the pipeline thread never waits for an encoder.
        self.preview_encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kd-preview")
        self.encoder = EncodePool(settings.png_compress_level)  # the answers' images, off the pipeline thread

    @property
    def smoke_test(self) -> bool:
        description = self.description
        return self.marker is not None or (description is not None and description.smoke_test)

    @property
    def description(self) -> BackendDescription | None:
        """What the loaded backend or engine is and can do; None until then."""
        if self.backend is not None:
            return self.backend.description
        return self.runner.engine.description if self.runner is not None else None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.batcher.start()
        load = self._start_engine() if self.uses_engine else self._load_and_warm()
        self._loading = asyncio.create_task(load, name="kd-load")

    async def stop(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
            self._loading = None
        await self.batcher.stop()
        self.preview_encoder.shutdown(wait=False, cancel_futures=True)
        self.encoder.shutdown()
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.runner is not None:
            await self.runner.engine.aclose()
            self.runner = None
        await asyncio.to_thread(self.tracer.shutdown)  # a last export: a blocking HTTP request

    async def _load_and_warm(self) -> None:
        settings = self.settings
        try:
            started = time.monotonic()
            backend: ImageBackend = await self.batcher.run_exclusive(lambda: self._load(settings))
            self.metrics.load_seconds.set(time.monotonic() - started)
            self.backend = backend
            if settings.warmup:
                self.phase = "warming"
                started = time.monotonic()
                await self.batcher.run_exclusive(lambda: self._warm_up(backend))
                if backend.description.compiled:  # torch.compile compiled each batch shape in the warm-up
                    self.metrics.compile_seconds.set(time.monotonic() - started)
        except Exception as exc:
            self._failed(exc)
            return
        self._ready()

    async def _start_engine(self) -> None:
        """Make the engine, then wait (no deadline: a sidecar may take minutes) for its first good probe."""
        settings = self.settings
        try:
            runner = EngineRunner(settings.engine, self._make_engine(settings), timeout=settings.engine_timeout_seconds)
        except Exception as exc:
            self._failed(exc)
            return
        self.runner = runner
        self.phase = "warming"
        while True:
            if await runner.probe():
                break
            await asyncio.sleep(ENGINE_RETRY_S)
        self.metrics.load_seconds.set(time.time() - self.started_at)
        self._ready()

    def _failed(self, exc: Exception) -> None:
        self.phase = "failed"
        self.error = str(exc) or type(exc).__name__
        log.error("model failed to load: %s", self.error, exc_info=not isinstance(exc, ModelLoadError))
        if self._on_fatal is not None:
            self._on_fatal(self.error)

    def _ready(self) -> None:
        self.phase = "ready"
        self.ready_at = time.time()
        self.metrics.ready.set(1)
        engine = f" with the {self.settings.engine} engine" if self.uses_engine else ""
        log.info("ready: serving %s (%s)%s", self.settings.served_name, ", ".join(sorted(self.names)), engine)

    def _warm_up(self, backend: ImageBackend) -> None:
        """In the worker thread: the warm-up (:mod:`.warmup`), between loading and saving the compile cache."""
        description = backend.description
        cache = CompileCache(self.settings.compile_cache_dir) if description.compiled else None
        if cache is not None:
            cache.load()
        level = self.settings.png_compress_level
        warm_up(
            backend,
            self.defaults,
            warm_sizes(description, self.settings.max_batch_size),
            warm_guidances(description, self.defaults.guidance),
            encode=lambda image: encode_image(image, "png", png_level=level),
            checker=self._checker(backend),
        )
        if cache is not None:
            cache.save()
            freeze_shapes()

    # -- serving --------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> str | None:
        """Requests name no model, the served name or an alias, or one of those and an adapter
        (``<model>:<adapter>``, whose name is returned); anything else is 404 model_not_found."""
        return self.pipeline_options.model_adapter(model, self.names)

    def moderates(self, params: GenerationParams) -> bool:
        """Whether this request's images go through an image safety checker."""
        description = self.description
        return (
            description is not None and description.safety_checker is not None and params.pipeline.moderation != "low"
        )

    def not_ready_error(self) -> ServiceUnavailableError:
        if self.phase == "failed":
            return ServiceUnavailableError(f"The model failed to load: {self.error}", code="model_load_failed")
        waiting = ""
        if self.runner is not None and self.runner.reason:
            waiting = f" (waiting for the {self.settings.engine} engine: {self.runner.reason})"
        return ServiceUnavailableError(
            f"The model is {self.phase}{waiting}; try again shortly.",
            code="model_not_ready",
            retry_after=NOT_READY_RETRY_AFTER,
        )

    def require_ready(self) -> None:
        if self.phase != "ready":
            raise self.not_ready_error()

    async def check_ready(self) -> None:
        """``/readyz``: loaded and warm, and for an engine, its health check passing (cached briefly)."""
        self.require_ready()
        if self.runner is None:
            return
        reason = await self.runner.ready()
        self.metrics.ready.set(0 if reason else 1)
        if reason:
            raise ServiceUnavailableError(
                f"The {self.settings.engine} engine is not ready: {reason}",
                code="upstream_not_ready",
                retry_after=NOT_READY_RETRY_AFTER,
            )

    def check_engine(self, request: EngineRequest) -> None:
        """A 400 naming the first field the client set that this server's engine cannot honour."""
        if self.runner is not None:
            self.runner.engine.check(request)

    async def generate(self, params: GenerationParams, request: EngineRequest | None = None) -> JobImages:
        """Queue one request (seeds ``seed, seed+1, …``; a fresh base seed when none) and wait for its
        base64 images. Cancelling the caller drops the request from the queue (see batcher.py)."""
        self.require_ready()
        return await self.run_jobs(self.generation_jobs(params, request))

    def generation_jobs(self, params: GenerationParams, request: EngineRequest | None = None) -> list[ImageJob]:
        base = _base_seed(params)
        seeds = tuple(base + i for i in range(params.n))
        forwarded = request.passthrough(self.settings.presets) if request is not None and self.uses_engine else ()
        return [ImageJob(params=params, seeds=seeds, passthrough=forwarded)]

    async def edit_jobs(self, edit: EditParams) -> list[ImageJob]:
        """The jobs of an edit or variation, one per input image (seeds continue across them), its images
        decoded in a thread; a 400 for an image that does not decode or a task this model lacks."""
        self.require_ready()
        inputs: list[EditInput | EditUpload] = (
            [upload_of(edit, source) for source in edit.sources]
            if self.uses_engine
            else list(await asyncio.to_thread(prepare_all, edit))
        )
        description = self.description
        available = description.edit_kinds if description is not None else ()
        for source in inputs:
            if source.kind not in available:
                what = "inpainting (a mask or transparent pixels)" if source.kind == "inpaint" else "image edits"
                raise InvalidRequestError(
                    f"This model does not support {what}.", param="model", code="unsupported_model"
                )
        base, n = _base_seed(edit.params), edit.params.n
        return [
            ImageJob(
                params=dataclasses.replace(edit.params, width=source.width, height=source.height),
                seeds=tuple(base + index * n + i for i in range(n)),
                source=None if isinstance(prepared, EditUpload) else prepared,
                upload=prepared if isinstance(prepared, EditUpload) else None,
            )
            for index, (source, prepared) in enumerate(zip(edit.sources, inputs, strict=True))
        ]

    async def run_jobs(self, jobs: Sequence[ImageJob]) -> JobImages:
        """Queue one request's jobs together and wait for all their base64 images, in job order (400
        ``moderation_blocked`` when the checker flagged them all). Cancelling the caller (or one job
        failing) drops what is still queued."""
        self.require_ready()
        futures = self.batcher.enqueue(jobs)
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            self.batcher.cancel(futures)
            raise
        return JobImages.merge(results).check()

    def _run_batch(self, jobs: list[ImageJob]) -> list[Future[JobImages]]:
        """In the worker thread: generate and moderate, then hand the images to the encoding pool."""
        backend = self.backend
        if backend is None:
            raise ServiceUnavailableError("The model is not loaded.", retry_after=NOT_READY_RETRY_AFTER)
        clock = PhaseClock(self.metrics.step_seconds.observe)  # the batch's phases, for its spans
        images = backend.generate(jobs, on_step=clock.step)
        clock.generated()
        action = self.settings.safety.action
        checker = self._checker(backend)
        results = moderate(jobs, images, checker, action)
        if checker is not None:
            clock.lap("safety")
        self.metrics.flagged_images.labels(action).inc(sum(result.flagged for result in results))
        return self.encoder.submit(jobs, results, on_done=lambda: clock.lap("encode"))

    @staticmethod
    def _checker(backend: ImageBackend) -> Callable[[list[Any]], list[bool]] | None:
        if isinstance(backend, ImageChecking) and backend.description.safety_checker is not None:
            return backend.flag_unsafe
        return None

    async def _run_engine_batch(self, jobs: list[ImageJob]) -> list[JobImages | BaseException]:
        if self.runner is None:
            raise ServiceUnavailableError("The engine is not started.", retry_after=NOT_READY_RETRY_AFTER)
        results = await self.runner.run_batch(jobs)
        return [result if isinstance(result, BaseException) else JobImages(result) for result in results]

    def _on_batch(self, batch: Batch) -> None:
        self.metrics.batch_size.observe(batch.images)
        self.metrics.images.inc(batch.images)
        self.tracer.record_batch(batch)


def _base_seed(params: GenerationParams) -> int:
    return params.seed if params.seed is not None else secrets.randbelow(MAX_SEED - 1024)
