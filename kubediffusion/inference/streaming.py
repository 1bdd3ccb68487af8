"""Streamed requests (``stream: true``): Server-Sent Events fed by the batcher and the step callback.

A streamed request is queued like any other (its jobs share batches with plain ones; the batch key
ignores ``stream``) but before the route answers 200, so a full queue or a not-ready model is still a
JSON 429/503. Its jobs carry an ``on_partial`` callback: in the pipeline thread it hands the preview
(a small array) to the server's preview encoder (one thread: resize to the output size, encode in the
request's output format, base64) and queues the pending encode on this request's asyncio queue, with
``call_soon_threadsafe``. The batch's results reach the event loop through the same FIFO of thread-safe
callbacks, after every preview the batch made, so partial images always precede their completed event.

A client that hangs up: Starlette cancels the response's body iterator; its ``finally`` cancels the
request's futures, which drops what is still queued (see ``Batcher.cancel``). A batch already running
finishes for the other requests in it; this one's images are discarded. While a request waits, a
comment line goes out every ``KEEPALIVE_INTERVAL_S`` (idle proxies then keep the connection open).
A request whose images go through the model's safety checker gets no partial images (a preview would
show what the checker has not seen); images the checker rejected get no completed event, and when it
rejected them all the stream ends with a ``moderation_blocked`` error event.
Once its images are made, and before their completed events, the stream reports the request's compute
time in a comment (``: x-kubediffusion-compute-seconds 1.234``, :mod:`kubediffusion.api.computetime`),
which the router reads and drops.
Event shapes and the wire format: :mod:`kubediffusion.api.events`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fastapi.responses import StreamingResponse

from kubediffusion.api.computetime import comment
from kubediffusion.api.errors import APIError, ModerationBlockedError
from kubediffusion.api.events import (
    KEEPALIVE,
    KEEPALIVE_INTERVAL_S,
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    EventEcho,
    StreamTask,
    completed_event,
    encode_error,
    encode_event,
    partial_image_event,
)
from kubediffusion.api.schema import GenerationParams, now_seconds
from kubediffusion.inference.backend import ImageJob, PartialCallback
from kubediffusion.inference.encoding import encode_image, to_b64
from kubediffusion.inference.moderation import JobImages
from kubediffusion.inference.requestctx import current_request

if TYPE_CHECKING:
    from PIL.Image import Image

    from kubediffusion.inference.server import InferenceServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Partial:
    job: int
    index: int
    encoded: Future[str]


_DONE = object()


def encode_preview(preview: Image | bytes, params: GenerationParams) -> str:
    """A preview at the output size, in the request's format (linear previews are 1/8 of each side);
    an engine's preview comes encoded already."""
    if isinstance(preview, bytes):
        return to_b64(preview)
    from PIL import Image as PILImage

    size = (params.width, params.height)
    if preview.size != size:
        preview = preview.resize(size, PILImage.Resampling.BILINEAR)
    return to_b64(encode_image(preview, params.output_format, params.output_compression, fast=True))


class ImageEventStream:
    """One streamed request: queued at construction (raises QueueFullError / 503 then), its events
    produced by :meth:`events`."""

    def __init__(
        self,
        server: InferenceServer,
        task: StreamTask,
        jobs: Sequence[ImageJob],
        *,
        quality: str | None,
        background: str | None,
        keepalive_s: float | None = None,
    ) -> None:
        server.require_ready()
        self.server = server
        self.task = task
        self.keepalive_s = KEEPALIVE_INTERVAL_S if keepalive_s is None else keepalive_s
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False  # the stream ended (the client left): previews still due are not encoded
        self.jobs = [replace(job, on_partial=self._sink(index, job.params)) for index, job in enumerate(jobs)]
        self.echoes = [EventEcho.of(job.params, quality=quality, background=background) for job in self.jobs]
        self.request = current_request()  # its compute seconds, reported in a comment (api.computetime)
        self.futures = server.batcher.enqueue(self.jobs)
        self.results: asyncio.Future[list[JobImages]] = asyncio.ensure_future(asyncio.gather(*self.futures))
        self.results.add_done_callback(lambda _: self.queue.put_nowait(_DONE))

    def _sink(self, job: int, params: GenerationParams) -> PartialCallback | None:
        if params.partial_images <= 0 or self.server.moderates(params):
            return None
        encoder: ThreadPoolExecutor = self.server.preview_encoder

        def on_partial(_image: int, index: int, preview: Image | bytes) -> None:  # in the pipeline thread
            if self.closed:
                return
            encoded = encoder.submit(encode_preview, preview, params)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, _Partial(job, index, encoded))

        return on_partial

    def response(self) -> StreamingResponse:
        return StreamingResponse(self.events(), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    async def events(self) -> AsyncIterator[bytes]:
        requests = self.server.metrics.requests
        outcome = "disconnected"
        try:
            while (item := await self._next()) is not _DONE:
                if item is None:
                    yield KEEPALIVE
                    continue
                b64 = await asyncio.wrap_future(item.encoded)
                yield encode_event(
                    partial_image_event(self.task, b64, self.echoes[item.job], item.index, now_seconds())
                )
            results = self.results.result()  # raises what failed the batch
            if self.request is not None and self.request.compute_seconds > 0:
                yield comment(self.request.compute_seconds)
            JobImages.merge(results).check()
            for job, done in enumerate(results):
                for b64 in done.images:
                    yield encode_event(completed_event(self.task, b64, self.echoes[job], now_seconds()))
            outcome = "success"
        except APIError as exc:
            outcome = "error" if exc.status_code >= 500 else "invalid"
            if isinstance(exc, ModerationBlockedError):
                outcome = "moderation_blocked"
            yield encode_error(exc)
        except Exception:
            log.exception("streamed request failed")
            outcome = "error"
            yield encode_error(APIError("The server had an error while processing your request."))
        finally:
            self.closed = True
            self.server.batcher.cancel(self.futures)  # still queued (the client left): dropped
            self.results.cancel()
            requests.labels(outcome).inc()

    async def _next(self) -> Any:
        """The next queued item, or None when nothing came for ``keepalive_s``."""
        try:
            async with asyncio.timeout(self.keepalive_s):
                return await self.queue.get()
        except TimeoutError:
            return None
