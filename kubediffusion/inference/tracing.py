"""OpenTelemetry spans of the model server, when an OTLP endpoint is configured.

Tracing is on when an endpoint is configured: ``KD_INFERENCE_OTLP_ENDPOINT`` (``--otlp-endpoint``; the
operator sets it in model pods when it has one) or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` (see :func:`kubediffusion.api.tracecontext.otlp_endpoint`). Then
:mod:`.otel` (the only module that imports the SDK, from the ``tracing`` extra) exports, per image
request, in the trace of the router's ``traceparent`` (the router's ``forward`` span is the parent):

* the server span (``POST /v1/images/generations``), from arrival to the end of the answer;
* ``queue wait``, from the request's first item queued to its batch's start (one per batch it was in);
* ``batch``, the pipeline call and what follows it, with the children ``denoise`` (prompt encoding and
  the denoising steps), ``decode`` (VAE and conversion to images), ``safety`` (the checker, when the model
  has one) and ``encode`` (PNG/JPEG/WebP and base64); an engine's batch has no children.

A batch shared by several requests gets a ``batch`` span (and children) *in each request's trace*, all
with the batch's one timing and id (``kubediffusion.batch.id``), rather than one span linked to each
request: a trace is then whole on its own (a trace view shows where this request's time went, and
trace search by request finds it), and links, which most trace views show as a bare id, are not needed
to read it. The cost is a few spans per request, made once the batch is over from the times it
recorded (nothing is traced inside the pipeline call).

Off (the default) nothing of the SDK is imported and no span is made; log lines still carry the
router's trace id (from ``traceparent``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Scope

from kubediffusion.api.tracecontext import otlp_endpoint

if TYPE_CHECKING:
    from kubediffusion.inference.requestctx import Batch, RequestContext

log = logging.getLogger(__name__)

SERVICE_NAME = "kubediffusion-inference"


class Span(Protocol):
    def set(self, key: str, value: Any) -> None: ...


class Tracer(Protocol):
    enabled: bool

    def server_span(self, scope: Scope, request: RequestContext) -> contextlib.AbstractContextManager[Span]:
        """Around one image request, a child of its ``traceparent``; sets ``request.trace_id`` and ``span``."""
        ...

    def record_batch(self, batch: Batch) -> None:
        """The spans of a finished batch (queue wait, batch, its phases) in each of its requests' traces."""
        ...

    def shutdown(self) -> None: ...


class NoSpan:
    def set(self, key: str, value: Any) -> None:
        return None


NO_SPAN = NoSpan()


class NoTracer:
    """Tracing off: no spans; the trace id of log lines is the router's (see the module docstring)."""

    enabled = False

    @contextlib.contextmanager
    def server_span(self, scope: Scope, request: RequestContext) -> Iterator[Span]:
        request.trace_id = request.parent.trace_id if request.parent is not None else None
        yield NO_SPAN

    def record_batch(self, batch: Batch) -> None:
        return None

    def shutdown(self) -> None:
        return None


def make_tracer(configured_endpoint: str, *, model: str = "") -> Tracer:
    """The OpenTelemetry tracer when an endpoint is configured and the SDK installed, else :class:`NoTracer`."""
    endpoint = otlp_endpoint(configured_endpoint)
    if endpoint is None:
        return NoTracer()
    try:
        from kubediffusion.inference.otel import OtelTracer  # the SDK is imported here, and only here
    except ImportError as exc:
        log.error(
            "tracing is configured (%s) but the OpenTelemetry SDK is not installed (pip install "
            "'kubediffusion[tracing]'): %s; serving without spans",
            endpoint,
            exc,
        )
        return NoTracer()
    log.info("tracing: exporting spans over OTLP/HTTP to %s", endpoint)
    return OtelTracer(endpoint, service_name=os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME, model=model)
