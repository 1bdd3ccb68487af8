"""What identifies a request between the router and a model pod: its id and its W3C trace context.

The router (``kubediffusion.router.requestctx``, ``.tracing``) and the model server
(``kubediffusion.inference.requestctx``, ``.tracing``) read them the same way, from here:

* ``X-Request-Id``: 1 to 128 characters of ``A-Z a-z 0-9 . _ : @ / + = -``; anything else is replaced by
  a new id (32 hex digits), never echoed: it would end up in logs and in other systems' headers.
* ``traceparent`` (and ``tracestate``): a valid version-00 (or later) W3C header, else none.
* The OTLP endpoint a component exports spans to: its own setting, else the standard
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``; ``OTEL_SDK_DISABLED=true``
  or ``OTEL_TRACES_EXPORTER=none`` turn tracing off whatever is set.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

REQUEST_ID_HEADER = "x-request-id"
ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)
MAX_TRACESTATE = 512  # W3C: 32 entries; a longer header is dropped rather than passed on


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str | None:
    """``value`` if it is an id to pass on (see the module docstring), else None."""
    return value if value is not None and ACCEPTED_REQUEST_ID.fullmatch(value) else None


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"
    tracestate: str | None = None

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceParent | None:
        """The header's context, None when it is not a valid version-00 (or later) traceparent."""
        if traceparent is None:
            return None
        value = traceparent.strip()
        match = TRACEPARENT.match(value)
        if match is None or match["version"] == "ff" or (match["version"] == "00" and len(value) != 55):
            return None
        if set(match["trace"]) == {"0"} or set(match["span"]) == {"0"}:
            return None
        state = tracestate.strip() if tracestate and len(tracestate) <= MAX_TRACESTATE else None
        return cls(match["trace"], match["span"], match["flags"], state or None)

    @classmethod
    def new(cls) -> TraceParent:
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def otlp_endpoint(configured: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL to export to, None when tracing is off (see the module docstring).

    ``configured`` (a component's own setting) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` are base URLs
    (``/v1/traces`` is added), ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` the full URL, as the SDK reads them."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    base = configured.strip() or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if configured.strip() or not environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return base.rstrip("/") + "/v1/traces" if base else None
    return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
