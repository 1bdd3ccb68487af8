"""The server's side of an engine: run a batch's jobs, check what comes back, probe the upstream.

A batch of an engine is its jobs sent at once (each job is one upstream call, or a few when ``n`` is
above ``engine_max_n``), so ``max_batch_size`` bounds the images in flight upstream and the queue in
front of them stays ours (``max_queue``, 429). A job that fails fails alone; the others of its batch
are answered. Each job is bounded by ``engine_timeout_seconds`` (504), and each image it returns must
be what was asked: the count, the output format (from the bytes' signature) and the size (from the
header), else a 502 names what came back. Nothing is decoded.

``/readyz`` calls :meth:`EngineRunner.ready`: the engine's health check, at most once per
``PROBE_TTL_S`` however often the kubelet asks; its last outcome is kept for the message and the
``kubediffusion_inference_ready`` gauge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from kubediffusion.api.errors import APIError, InvalidRequestError, UpstreamTimeoutError
from kubediffusion.api.imageinput import sniff_image
from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.encoding import to_b64
from kubediffusion.inference.engines.base import Engine
from kubediffusion.inference.engines.errors import BadGatewayError, UpstreamNotReady

log = logging.getLogger(__name__)

PROBE_TTL_S = 1.0


class EngineRunner:
    def __init__(self, name: str, engine: Engine, *, timeout: float) -> None:
        self.name = name
        self.engine = engine
        self.timeout = timeout
        self.healthy = False
        self.reason: str | None = "not checked yet"
        self._probed_at = -PROBE_TTL_S
        self._probe_lock = asyncio.Lock()

    async def run_batch(self, jobs: list[ImageJob]) -> list[list[str] | BaseException]:
        """Each job's base64 images, or the error that job ended in (the batcher fails only that one)."""
        results = await asyncio.gather(*(self._run(job) for job in jobs), return_exceptions=True)
        for result in results:
            if isinstance(result, APIError) and result.status_code >= 500:
                log.warning("%s job failed: %s", self.name, result.message)
            elif isinstance(result, BaseException) and not isinstance(result, APIError):
                log.error("%s job failed", self.name, exc_info=result)
        return list(results)

    async def _run(self, job: ImageJob) -> list[str]:
        try:
            async with asyncio.timeout(self.timeout):
                images = await self.engine.generate(job)
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"The {self.name} engine did not finish within {self.timeout:g}s (engine_timeout_seconds)."
            ) from None
        check_images(self.name, job, images)
        return [to_b64(image) for image in images]

    async def ready(self) -> str | None:
        """None when the engine is up, else why not (probed at most once per PROBE_TTL_S)."""
        async with self._probe_lock:
            if time.monotonic() - self._probed_at >= PROBE_TTL_S:
                await self.probe()
        return None if self.healthy else self.reason

    async def probe(self) -> bool:
        try:
            await self.engine.probe()
        except Exception as exc:  # UpstreamNotReady, or an adapter's bug: not ready either way, and said why
            reason = str(exc) if isinstance(exc, UpstreamNotReady) else f"{type(exc).__name__}: {exc}"
            if self.healthy or self.reason != reason:
                log.warning(
                    "%s engine is not ready: %s", self.name, reason, exc_info=not isinstance(exc, UpstreamNotReady)
                )
            self.healthy, self.reason = False, reason
        else:
            if not self.healthy:
                log.info("%s engine is ready", self.name)
            self.healthy, self.reason = True, None
        self._probed_at = time.monotonic()
        return self.healthy


def check_images(engine: str, job: ImageJob, images: Sequence[bytes]) -> None:
    params = job.params
    if len(images) != params.n:
        raise BadGatewayError(
            f"The {engine} engine returned {len(images)} images, {params.n} were asked for.",
            code="bad_upstream_response",
        )
    for index, data in enumerate(images):
        try:
            info = sniff_image(data, "image")
        except InvalidRequestError as exc:
            raise BadGatewayError(
                f"The {engine} engine returned image {index} that is not a valid image: {exc.message}",
                code="bad_upstream_response",
            ) from None
        if info.format != params.output_format:
            raise BadGatewayError(
                f"The {engine} engine returned a {info.format} image, {params.output_format} was asked for.",
                code="bad_upstream_response",
            )
        if (info.width, info.height) != (params.width, params.height):
            raise BadGatewayError(
                f"The {engine} engine returned a {info.width}x{info.height} image, {params.width}x{params.height} "
                "was asked for (a workflow that resizes must make the requested size).",
                code="bad_upstream_response",
            )
