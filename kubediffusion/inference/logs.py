"""The model server's log lines: each one says which request (or batch of requests) it is about.

:class:`RequestIdFilter` (on the root handler, so every logger's records pass it, uvicorn's and the
libraries' included) gives each record ``request_id`` and ``trace_id``: those of the request being
served (:mod:`.requestctx`); in the worker running a batch, the ids of every request in it, comma
separated; ``-`` outside both (loading, warm-up). Formats (``--log-format`` /
``KD_INFERENCE_LOG_FORMAT``, :mod:`kubediffusion.api.logformat`): ``text`` (the default) or ``json``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from kubediffusion.api.logformat import LogFormat, formatter
from kubediffusion.inference.requestctx import current_batch, current_request


class RequestIdFilter(logging.Filter):
    """Sets the ids only where it knows them (the formatters write ``-`` for a record without), so that it
    never hides another component's ids from that component's own filter (a test process runs both)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        if request is not None:
            request_id, trace_id = request.request_id, request.trace_id or "-"
        elif (batch := current_batch()) is not None:
            request_id, trace_id = batch.request_ids, batch.trace_ids
        else:
            return True
        if not hasattr(record, "request_id"):
            record.request_id = request_id
        if not hasattr(record, "trace_id"):
            record.trace_id = trace_id
        return True


class InferenceLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so that a second call replaces it, and only it).
    It writes to whatever ``sys.stderr`` is at the time (as ``logging.lastResort`` does), never to a stream
    replaced since (a test's capture, closed once the test is over)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        return None


def configure_logging(level: str, log_format: LogFormat = "text") -> InferenceLogHandler:
    """A root handler (stderr) with the request id in every line, replacing one installed before (other
    handlers, a test's log capture, stay); returned, for a caller that removes it again."""
    handler = InferenceLogHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, InferenceLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # an engine adapter's every upstream call at INFO
    return handler
