"""The model server's OpenTelemetry spans, exported over OTLP/HTTP (protobuf): imported only when tracing is on.

One ``TracerProvider`` per server (never the process-global one, so servers in one process stay apart),
its spans batched and exported in the background (``BatchSpanProcessor``; the standard ``OTEL_BSP_*``
variables tune it, ``OTEL_TRACES_SAMPLER`` samples, ``OTEL_RESOURCE_ATTRIBUTES`` adds to the resource).
Spans and their layout: :mod:`.tracing`. Attributes: the request id, images, batch id and size, compute
seconds; never a prompt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from kubediffusion import __version__
from kubediffusion.inference.tracing import Span

if TYPE_CHECKING:
    from kubediffusion.inference.requestctx import Batch, RequestContext

PROPAGATOR = TraceContextTextMapPropagator()


class OtelSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)


class OtelTracer:
    enabled = True

    def __init__(
        self, endpoint: str, *, service_name: str, model: str = "", exporter: SpanExporter | None = None
    ) -> None:
        attributes = {"service.name": service_name, "service.version": __version__}
        if model:
            attributes["kubediffusion.model"] = model
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self.provider.get_tracer("kubediffusion.inference", __version__)

    @contextlib.contextmanager
    def server_span(self, scope: Scope, request: RequestContext) -> Iterator[Span]:
        carrier: dict[str, str] = {}
        if request.parent is not None:
            carrier["traceparent"] = request.parent.header()
            if request.parent.tracestate:
                carrier["tracestate"] = request.parent.tracestate
        method, path = scope.get("method", "POST"), scope.get("path", "")
        attributes = {
            "http.request.method": method,
            "url.path": path,
            "http.route": path,  # only fixed paths are traced (the image routes)
            "request.id": request.request_id,
        }
        with self._tracer.start_as_current_span(
            f"{method} {path}", context=PROPAGATOR.extract(carrier), kind=trace.SpanKind.SERVER, attributes=attributes
        ) as span:
            request.trace_id = format(span.get_span_context().trace_id, "032x")
            request.span = trace.set_span_in_context(span)
            yield OtelSpan(span)

    def record_batch(self, batch: Batch) -> None:
        now_ns, now = time.time_ns(), time.monotonic()

        def wall(moment: float) -> int:
            return now_ns - int((now - moment) * 1e9)

        ended = batch.ended if batch.ended is not None else now
        for share in batch.shares:
            parent = share.request.span
            if parent is None:  # not traced (a request outside the image routes, or one before tracing)
                continue
            waited = self._tracer.start_span(
                "queue wait", context=parent, start_time=wall(share.enqueued_at), attributes={"images": share.images}
            )
            waited.end(end_time=wall(batch.started))
            attributes: dict[str, str | int | float] = {
                "kubediffusion.batch.id": batch.id,
                "kubediffusion.batch.images": batch.images,
                "kubediffusion.batch.requests": len(batch.shares),
                "images": share.images,
                "kubediffusion.compute_seconds": batch.share_seconds(share),
            }
            span = self._tracer.start_span(
                "batch", context=parent, start_time=wall(batch.started), attributes=attributes
            )
            if batch.failed is not None:
                span.set_status(Status(StatusCode.ERROR, batch.failed))
            inside = trace.set_span_in_context(span)
            for phase in batch.phases:
                child = self._tracer.start_span(phase.name, context=inside, start_time=wall(phase.start))
                child.end(end_time=wall(phase.end))
            span.end(end_time=wall(ended))

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is still batched
