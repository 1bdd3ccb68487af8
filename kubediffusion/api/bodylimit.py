"""ASGI middleware that guards a request's body before any route reads it (router and inference server).

Three rules, each answered with the OpenAI envelope:

* **Framing.** A Content-Length that is not one run of ASCII digits (after the optional whitespace
  around a header value), more than one Content-Length, or a Content-Length together with a
  Transfer-Encoding is a 400 (``invalid_content_length``) with ``Connection: close``: the body cannot be
  framed with confidence, and RFC 9112 §6.3 asks a server to close the connection after a request with
  both headers (request smuggling).
* **Size.** A declared Content-Length over ``max_bytes`` is a 413 at once; a streamed (chunked) body is a
  413 as soon as it passes the limit (the route's body read raises RequestTooLargeError). Paths named in
  ``path_limits`` (the image uploads: edits, variations) have their own, larger limit.
* **Stalls.** While the body is incomplete, each read waits at most ``read_timeout`` seconds; then the
  answer is 408 with ``Connection: close`` (a slowloris client holds nothing for long). Reads after the
  body ended (a route watching for the client to hang up) are not timed.

What reaches this middleware depends on the HTTP parser in front of it. Observed with uvicorn 0.54,
sending each variant on a real socket (``tests/unit/hardening/test_hardening_http_server.py`` replays
this table against both apps: under h11 always, under httptools where it is installed). uvicorn's
``auto`` picks httptools when it can import it; it is a dependency, so httptools serves (h11 is
uvicorn's fallback where it is missing).

==========================================  ==========================  ===================================
Content-Length sent                          h11 (fallback)               httptools (what serves: a dependency)
==========================================  ==========================  ===================================
``abc``, empty, ``-1``, ``+4``, ``0x4``,     parser's plain-text 400      parser's plain-text 400
``4.0``, ``1e1``, ``1_0``, ``4 4``,
non-ASCII digits, 21+ digits, ``4,5``,
two different values
``4, 4`` and two equal headers               normalised to one ``4``      parser's plain-text 400
`` 4 `` / ``4\\t`` (whitespace around)       stripped: ``4``              reaches the app as ``4 `` (valid)
20 digits (above 2**64)                      reaches the app: 413 here    parser's plain-text 400
``00004`` (leading zeros, valid)             reaches the app              reaches the app
Content-Length + ``Transfer-Encoding:        reaches the app, framed as   parser's plain-text 400
chunked``                                    chunked: **400 here**
==========================================  ==========================  ===================================

So under uvicorn the only malformed variant that reaches an app is Content-Length with chunked
Transfer-Encoding (h11), answered here; the others never get past the parser, which answers its own
plain-text 400 (and closes) before any app code runs, where no envelope can be given. (One oddity:
under httptools a ``Transfer-Encoding: gzip`` request does start the app, but only after the parser
has answered 400 and closed the connection; whatever the app answers goes nowhere.) The strict checks
below also hold under any other ASGI server, and for in-process callers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubediffusion.api.errors import (
    APIError,
    BadFramingError,
    RequestTimeoutError,
    RequestTooLargeError,
    error_response,
)

DIGITS = re.compile(rb"[0-9]+")
OPTIONAL_WHITESPACE = b" \t"


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"Request body too large: the limit is {limit} bytes.")


def framing_error(headers: Iterable[tuple[bytes, bytes]], max_bytes: int) -> APIError | None:
    """The error a request's Content-Length and Transfer-Encoding headers deserve, or None."""
    lengths = [value.strip(OPTIONAL_WHITESPACE) for name, value in headers if name == b"content-length"]
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    if not lengths:
        return None
    if chunked:
        return BadFramingError("A request must not carry both Content-Length and Transfer-Encoding.")
    if len(lengths) > 1 or DIGITS.fullmatch(lengths[0]) is None:
        return BadFramingError("Invalid Content-Length header: it must be a single non-negative integer.")
    if int(lengths[0]) > max_bytes:
        return _too_large(max_bytes)
    return None


class BodyLimitMiddleware:
    """Framing, size and stall rules for request bodies (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        read_timeout: float | None = None,
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        error = framing_error(scope.get("headers", ()), max_bytes)
        if error is not None:
            await error_response(error)(scope, receive, send)
            return
        seen = 0
        body_ended = False

        async def guarded_receive() -> Message:
            nonlocal seen, body_ended
            if body_ended:
                return await receive()
            try:
                async with asyncio.timeout(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"The request body stalled: nothing arrived for {self.read_timeout:g} seconds."
                ) from None
            if message["type"] != "http.request":  # http.disconnect: nothing more will come
                body_ended = True
                return message
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _too_large(max_bytes)
            body_ended = not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)
