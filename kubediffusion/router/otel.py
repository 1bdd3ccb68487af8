"""The router's OpenTelemetry spans, exported over OTLP/HTTP (protobuf): imported only when tracing is on.

One ``TracerProvider`` per app (never the process-global one, so apps in one process stay apart), its
spans batched and exported in the background (``BatchSpanProcessor``; the standard ``OTEL_BSP_*``
variables tune it, ``OTEL_TRACES_SAMPLER`` samples, ``OTEL_RESOURCE_ATTRIBUTES`` adds to the resource).
Spans: ``<METHOD> <route>`` (server, from the client's ``traceparent`` when it sent one), ``auth``, ``route``,
``forward`` (client, one per pod attempt; its context is the ``traceparent`` the pod gets). Attributes:
the request id, tenant, model, images, the pod's address and answer; never a prompt or a key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from kubediffusion import __version__
from kubediffusion.router.tracing import TRACE_ID, Span

PROPAGATOR = TraceContextTextMapPropagator()


class OtelSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)


class OtelTracer:
    enabled = True

    def __init__(self, endpoint: str, *, service_name: str) -> None:
        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self.provider.get_tracer("kubediffusion.router", __version__)

    @contextlib.contextmanager
    def server_span(self, scope: Scope, headers: Mapping[str, str], request_id: str) -> Iterator[Span]:
        method = scope.get("method", "GET")
        parent = PROPAGATOR.extract(carrier=dict(headers))
        attributes = {"http.request.method": method, "url.path": scope.get("path", ""), "request.id": request_id}
        with self._tracer.start_as_current_span(
            method, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        ) as span:
            token = TRACE_ID.set(format(span.get_span_context().trace_id, "032x"))
            try:
                yield OtelSpan(span)
            finally:
                route = scope.get("route")
                if route is not None and hasattr(route, "path"):  # the route's template, never an image id
                    span.update_name(f"{method} {route.path}")
                    span.set_attribute("http.route", route.path)
                TRACE_ID.reset(token)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        kind = trace.SpanKind.CLIENT if name == "forward" else trace.SpanKind.INTERNAL
        with self._tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield OtelSpan(span)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        PROPAGATOR.inject(headers)

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is still batched
