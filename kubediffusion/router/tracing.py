"""Trace context (W3C ``traceparent``) and, when configured, OpenTelemetry spans of the router.

Tracing is on when an OTLP endpoint is configured: ``KD_ROUTER_OTLP_ENDPOINT`` or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_SDK_DISABLED`` is not
``true``, ``OTEL_TRACES_EXPORTER`` not ``none``). Then :mod:`.otel` (the only module that imports the
OpenTelemetry SDK, from the ``tracing`` extra) exports the router's spans over OTLP/HTTP: one server span
per request, with ``auth``, ``route`` and one ``forward`` per pod attempt inside it; the pod gets the
``forward`` span's ``traceparent``.

Off (the default) nothing of the SDK is imported and no span is made: :class:`PassThroughTracer` still
propagates: the client's ``traceparent`` (and ``tracestate``) go to the pod as they came, and a request
without one gets a new trace (sampled flag set, so that a pod that traces records it), so the pod's spans
of one request always share a trace id with the client's or with each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol

from starlette.types import Scope

from kubediffusion.api.tracecontext import TraceParent, otlp_endpoint

log = logging.getLogger(__name__)

# The trace id of the request being served, for log lines (logs.py); set by either tracer.
TRACE_ID: ContextVar[str | None] = ContextVar("kubediffusion_trace_id", default=None)
_CONTEXT: ContextVar[TraceParent | None] = ContextVar("kubediffusion_traceparent", default=None)


class Span(Protocol):
    def set(self, key: str, value: Any) -> None: ...


class Tracer(Protocol):
    enabled: bool

    def server_span(
        self, scope: Scope, headers: Mapping[str, str], request_id: str
    ) -> contextlib.AbstractContextManager[Span]:
        """Around one request: its trace context taken from the client's headers (or new)."""
        ...

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
        """A child span of the current one (``auth``, ``route``, ``forward``)."""
        ...

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The current trace context into a request to a pod (``traceparent``, ``tracestate``)."""
        ...

    def shutdown(self) -> None: ...


class NoSpan:
    def set(self, key: str, value: Any) -> None:
        return None


NO_SPAN = NoSpan()
_NO_SPAN_CONTEXT = contextlib.nullcontext(NO_SPAN)  # stateless: one for every span of every request


class PassThroughTracer:
    """Tracing off: trace context passed on (or started), no spans (see the module docstring)."""

    enabled = False

    @contextlib.contextmanager
    def server_span(self, scope: Scope, headers: Mapping[str, str], request_id: str) -> Iterator[Span]:
        context = TraceParent.parse(headers.get("traceparent"), headers.get("tracestate")) or TraceParent.new()
        token, trace_token = _CONTEXT.set(context), TRACE_ID.set(context.trace_id)
        try:
            yield NO_SPAN
        finally:
            _CONTEXT.reset(token)
            TRACE_ID.reset(trace_token)

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Span]:
        return _NO_SPAN_CONTEXT

    def inject(self, headers: MutableMapping[str, str]) -> None:
        context = _CONTEXT.get()
        if context is None:
            return
        headers["traceparent"] = context.header()
        if context.tracestate:
            headers["tracestate"] = context.tracestate

    def shutdown(self) -> None:
        return None


def make_tracer(configured_endpoint: str, *, service_name: str = "kubediffusion-router") -> Tracer:
    """The OpenTelemetry tracer when an endpoint is configured and the SDK installed, else pass-through."""
    endpoint = otlp_endpoint(configured_endpoint)
    if endpoint is None:
        return PassThroughTracer()
    try:
        from kubediffusion.router.otel import OtelTracer  # the SDK is imported here, and only here
    except ImportError as exc:
        log.error(
            "tracing is configured (%s) but the OpenTelemetry SDK is not installed (pip install "
            "'kubediffusion[tracing]'): %s; serving without spans",
            endpoint,
            exc,
        )
        return PassThroughTracer()
    log.info("tracing: exporting spans over OTLP/HTTP to %s", endpoint)
    return OtelTracer(endpoint, service_name=os.environ.get("OTEL_SERVICE_NAME") or service_name)
