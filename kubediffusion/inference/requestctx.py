"""Each request's id, trace context and compute time at the model pod, and the batch the worker runs.

:class:`RequestContextMiddleware` (the outermost of the app) gives every HTTP request a
:class:`RequestContext`: the router's ``X-Request-Id`` when it is a plausible one, else a new one
(:mod:`kubediffusion.api.tracecontext`), and its ``traceparent``. It is in a context variable
(:data:`CURRENT`) while the request is served, so every log line written meanwhile names it
(:mod:`.logs`), and it is echoed in the answer's ``X-Request-Id``.

The batcher takes the current request of each item it queues. While a batch runs, :data:`BATCH` holds
its :class:`Batch` (the worker thread runs in a copy of the context where it is set), so the lines the
worker logs name every request of the batch, and the server can record the batch's phases (denoise,
decode, safety, encode). When the batch is done the batcher gives each request its share of the batch's
compute time, by images (:meth:`Batch.attribute`): a JSON answer carries the request's total in
``X-KubeDiffusion-Compute-Seconds`` (added here, as the answer starts), an event stream in its closing
comment (:mod:`.streaming`); see :mod:`kubediffusion.api.computetime`.

Image requests (``traced_paths``) also get a server span from the tracer (:mod:`.tracing`), one log
line when answered (``POST /v1/images/generations 200 1.234s compute=0.456s``), and their time from
arrival to the last byte of a successful answer goes to the latency histogram.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubediffusion.api.computetime import COMPUTE_SECONDS_HEADER, header_value
from kubediffusion.api.errors import CLIENT_CLOSED_REQUEST
from kubediffusion.api.events import SSE_MEDIA_TYPE
from kubediffusion.api.tracecontext import REQUEST_ID_HEADER, TraceParent, accepted_request_id, new_request_id

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from kubediffusion.inference.tracing import Tracer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RequestContext:
    request_id: str
    parent: TraceParent | None = None  # the router's traceparent, None when none (valid) came
    arrived: float = field(default_factory=time.monotonic)
    compute_seconds: float = 0.0  # its shares of the batches it was in, by images (the batcher adds them)
    trace_id: str | None = None  # the trace its spans are in, for log lines (set by the tracer)
    span: Any = None  # the tracer's handle of its server span; None: no spans


CURRENT: ContextVar[RequestContext | None] = ContextVar("kubediffusion_inference_request", default=None)


def current_request() -> RequestContext | None:
    return CURRENT.get()


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # time.monotonic()
    end: float


@dataclass(frozen=True)
class Share:
    """One request's part of a batch: its images (of all its items there) and when its first was queued."""

    request: RequestContext
    images: int
    enqueued_at: float


@dataclass(eq=False)
class Batch:
    """One batch the worker runs: the requests in it, its images, its times (``time.monotonic()``)."""

    shares: tuple[Share, ...]
    images: int  # all of the batch's images, those of items queued outside a request included
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    phases: list[Phase] = field(default_factory=list)  # appended by the worker thread while it runs
    failed: str | None = None  # what failed the whole batch
    id: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def of(cls, items: Collection[tuple[RequestContext | None, int, float]]) -> Batch:
        """The batch of ``items`` (request, images, queued at), a request's items merged into one share."""
        shares: dict[RequestContext, Share] = {}
        for request, images, enqueued_at in items:
            if request is None:
                continue
            known = shares.get(request)
            shares[request] = (
                Share(request, images, enqueued_at)
                if known is None
                else Share(request, known.images + images, min(known.enqueued_at, enqueued_at))
            )
        return cls(tuple(shares.values()), sum(images for _, images, _ in items))

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    @property
    def request_ids(self) -> str:
        return ",".join(share.request.request_id for share in self.shares) or "-"

    @property
    def trace_ids(self) -> str:
        ids = dict.fromkeys(share.request.trace_id for share in self.shares if share.request.trace_id)
        return ",".join(ids) or "-"

    def phase(self, name: str, start: float, end: float) -> None:
        self.phases.append(Phase(name, start, end))

    def finish(self) -> None:
        """Stop the clock and give each request its share of the compute time, by images."""
        self.ended = time.monotonic()
        if self.images > 0:
            for share in self.shares:
                share.request.compute_seconds += self.seconds * share.images / self.images

    def share_seconds(self, share: Share) -> float:
        return self.seconds * share.images / self.images if self.images else 0.0


BATCH: ContextVar[Batch | None] = ContextVar("kubediffusion_inference_batch", default=None)


def current_batch() -> Batch | None:
    return BATCH.get()


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, tracer: Tracer, traced_paths: Collection[str], latency: Histogram | None = None
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.traced_paths = frozenset(traced_paths)
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request = RequestContext(
            accepted_request_id(headers.get(REQUEST_ID_HEADER)) or new_request_id(),
            TraceParent.parse(headers.get("traceparent"), headers.get("tracestate")),
        )
        traced = scope.get("path") in self.traced_paths
        token = CURRENT.set(request)
        try:
            with self.tracer.server_span(scope, request) if traced else contextlib.nullcontext() as span:
                status = 0

                async def send_with_context(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                        response_headers = MutableHeaders(scope=message)
                        response_headers[REQUEST_ID_HEADER] = request.request_id
                        stream = response_headers.get("content-type", "").startswith(SSE_MEDIA_TYPE)
                        if request.compute_seconds > 0 and not stream:  # a stream reports it in a comment
                            response_headers[COMPUTE_SECONDS_HEADER] = header_value(request.compute_seconds)
                    elif message["type"] == "http.response.body" and not message.get("more_body", False):
                        self._answered(traced and status == 200, request)
                    await send(message)

                await self.app(scope, receive, send_with_context)
                if span is not None:
                    span.set("http.response.status_code", status)
                    span.set("kubediffusion.compute_seconds", request.compute_seconds)
                    if status != CLIENT_CLOSED_REQUEST:  # a client gone is logged once, where it was seen
                        _log_answer(scope, status, request)
        finally:
            CURRENT.reset(token)

    def _answered(self, timed: bool, request: RequestContext) -> None:
        if timed and self.latency is not None:
            self.latency.observe(time.monotonic() - request.arrived)


def _log_answer(scope: Scope, status: int, request: RequestContext) -> None:
    seconds = time.monotonic() - request.arrived
    method, path = scope.get("method"), scope.get("path")
    log.info("%s %s %d %.3fs compute=%.3fs", method, path, status, seconds, request.compute_seconds)
