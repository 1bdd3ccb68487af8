"""The shape of a log line, the same in the router and the model server (docs/observability.md).

Each record has ``request_id`` and ``trace_id`` (``-`` outside a request), set by each component's own
filter. ``text``: ``<time> <LEVEL> <logger> [<request id>]: <message>``; ``json``: one object per line with
``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``request_id``, ``trace_id`` and, after an
error, ``exception`` (the traceback): what a log pipeline indexes without parsing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


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


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The format's formatter; a record no filter gave ids to is written with ``-``."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, defaults={"request_id": "-", "trace_id": "-"})
