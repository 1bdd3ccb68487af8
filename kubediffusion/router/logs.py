"""The router's log lines: each one says which request it is about.

:class:`RequestIdFilter` (on the root handler, so that every logger's records pass it, uvicorn's and the
libraries' included) gives each record ``request_id`` and ``trace_id``: those of the request being served
(:mod:`.requestctx`, :mod:`.tracing`), ``-`` outside one (discovery, the sweeper, startup).

Two formats (``--log-format`` / ``KD_ROUTER_LOG_FORMAT``): ``text`` (the default), one line
``<time> <LEVEL> <logger> [<request id>]: <message>``; ``json``, one JSON object per line with ``time``
(UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id``, ``trace_id`` and, after an error,
``exception`` (the traceback) — what a log pipeline indexes without parsing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

from kubediffusion.router.requestctx import current_request_id
from kubediffusion.router.tracing import TRACE_ID

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        if not hasattr(record, "trace_id"):
            record.trace_id = TRACE_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "trace_id": getattr(record, "trace_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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
