"""A deadline for a request's headers, as uvicorn protocol classes (router and inference server).

uvicorn has no header read timeout. What it offers and why none of it is one:

* ``timeout_keep_alive`` (5 s) closes a connection idle *after* a response; it is not armed on a new
  connection, and any byte received disarms it, so a client that opens a connection and sends its
  headers a byte every few seconds holds it forever (slowloris).
* ``h11_max_incomplete_event_size`` (16 KiB) caps the size of the headers, not their duration;
  ``limit_concurrency`` caps connections, which a slowloris client then fills.

So :func:`http_protocol` returns a subclass of the protocol uvicorn would pick itself (httptools when it
is installed, else h11) with a timer armed when a connection opens and again after each response, and
disarmed once a request's headers are complete (the protocol has then started a new request cycle).
When it fires the connection is closed, after a 408 envelope if part of a request had arrived (a
connection that sent nothing is closed silently, as an idle keep-alive connection is). The request
body's own stalls are :class:`~kubediffusion.api.bodylimit.BodyLimitMiddleware`'s; the rest of a body
uvicorn drains after an early answer is timed here (see :class:`HeaderDeadline`). The hooks used
(``connection_made``, ``data_received``, ``on_response_complete``, ``connection_lost``, ``cycle``,
``transport``, ``loop``) are the ones both of uvicorn's HTTP/1.1 protocols share, plus one for each
to tell whether a request body is still arriving (h11's connection state; httptools' callbacks).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kubediffusion.api.errors import RequestTimeoutError

log = logging.getLogger(__name__)


def _timeout_response(seconds: float) -> bytes:
    error = RequestTimeoutError(f"The request headers did not arrive within {seconds:g} seconds.")
    body = json.dumps(error.envelope()).encode()
    head = (
        f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderDeadline:
    """The timer of one connection; ``protocol`` is an uvicorn HTTP protocol with :class:`HeaderTimeoutMixin`.

    Armed for headers when the connection opens and once a response is sent and its request fully read;
    disarmed when a request's headers are complete. A request answered before its body was read (a 401,
    a 413) has the rest of that body drained by uvicorn: meanwhile the same timer is an idle timer,
    re-armed by every chunk, so a client still uploading is not cut off before it reads its answer, and
    one that stops is closed (silently: it has had its answer).
    """

    def __init__(self, protocol: Any, seconds: float) -> None:
        self.protocol = protocol
        self.seconds = seconds
        self.timer: asyncio.TimerHandle | None = None
        self.for_headers = True  # False while draining an answered request's body
        self.partial = False  # bytes of the next request arrived since the deadline was armed

    def arm(self, *, for_headers: bool = True) -> None:
        self.disarm()
        self.for_headers, self.partial = for_headers, False
        self.timer = self.protocol.loop.call_later(self.seconds, self.expire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _serving(self) -> bool:
        cycle = self.protocol.cycle
        return cycle is not None and not cycle.response_complete

    def received(self) -> None:
        """After the protocol handled incoming bytes."""
        if self._serving():  # a request's headers are complete and it is being answered
            self.disarm()
        elif self.timer is None:  # expired or never armed: nothing to time
            return
        elif self.protocol.reading_answered_body():
            self.arm(for_headers=False)  # it moves: more time
        elif not self.for_headers:
            self.arm()  # that body ended: the next request's headers start their deadline now
        else:
            self.partial = True

    def response_completed(self) -> None:
        """After a response, unless a pipelined request has already started or the connection closes."""
        if self.protocol.transport.is_closing() or self._serving():
            return
        self.arm(for_headers=not self.protocol.reading_answered_body())

    def expire(self) -> None:
        self.timer = None
        transport = self.protocol.transport
        if transport.is_closing():
            return
        if self.for_headers and self.partial:
            client = self.protocol.client[0] if self.protocol.client else "unknown"
            log.info("client %s did not send its request headers within %gs; closing", client, self.seconds)
            transport.write(_timeout_response(self.seconds))
        transport.close()


class HeaderTimeoutMixin(asyncio.Protocol):
    """Put before an uvicorn HTTP protocol class among the bases; ``header_timeout`` is set per server."""

    header_timeout = 10.0
    header_deadline: HeaderDeadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.header_deadline = HeaderDeadline(self, self.header_timeout)
        self.header_deadline.arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.header_deadline.received()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # both uvicorn protocols define it
        self.header_deadline.response_completed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.disarm()
        super().connection_lost(exc)

    def reading_answered_body(self) -> bool:
        """Whether the body of a request still arrives (its response may already be sent)."""
        raise NotImplementedError


class H11WithHeaderTimeout(HeaderTimeoutMixin, H11Protocol):
    def reading_answered_body(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY


def _httptools_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn's "auto" picks h11
        return None

    class HttpToolsWithHeaderTimeout(HeaderTimeoutMixin, HttpToolsProtocol):
        reading_body = False  # the parser has no state to ask: its callbacks tell

        def on_headers_complete(self) -> None:
            self.reading_body = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.reading_body = False
            super().on_message_complete()

        def reading_answered_body(self) -> bool:
            return self.reading_body

    return HttpToolsWithHeaderTimeout


def http_protocol(header_timeout: float, parser: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's ``http=`` for a server whose request headers must arrive within ``header_timeout``
    seconds. ``parser`` as uvicorn's: ``auto`` (httptools if installed, else h11), ``h11``, ``httptools``."""
    base: type[asyncio.Protocol] = H11WithHeaderTimeout
    if parser in ("auto", "httptools"):
        httptools = _httptools_class()
        if httptools is None and parser == "httptools":
            raise RuntimeError("the httptools parser was asked for, but httptools is not installed")
        base = httptools or base
    return type(base.__name__, (base,), {"header_timeout": header_timeout})
