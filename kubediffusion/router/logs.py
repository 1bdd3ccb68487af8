"""The router's log lines: each one says which request it is about.

:class:`RequestIdFilter` (on the root handler, so that every logger's records pass it, uvicorn's and the
libraries' included) gives each record ``request_id`` and ``trace_id``: those of the request being served
(:mod:`.requestctx`, :mod:`.tracing`), ``-`` outside one (discovery, the sweeper, startup).

Two formats (``--log-format`` / ``KD_ROUTER_LOG_FORMAT``), the model server's too:
:mod:`kubediffusion.api.logformat`.
"""

from __future__ import annotations

import logging

from kubediffusion.api.logformat import TEXT_FORMAT, JsonFormatter, LogFormat
from kubediffusion.router.requestctx import current_request_id
from kubediffusion.router.tracing import TRACE_ID


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        if not hasattr(record, "trace_id"):
            record.trace_id = TRACE_ID.get() or "-"
        return True


class RouterLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so that a second call replaces it, and only it)."""


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """A root handler (stderr) with the request id in every line, replacing one installed before (other
    handlers, a test's log capture, stay); ``level`` is uvicorn's name (``trace`` is logged as debug)."""
    handler = RouterLogHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, RouterLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level.lower() == "trace" else getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every upstream request at INFO
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # lightkube's, every list and watch request
