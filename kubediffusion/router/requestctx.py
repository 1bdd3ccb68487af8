"""Each request's id and trace context, for its whole way through the router.

:class:`RequestContextMiddleware` (the outermost of the app) gives every HTTP request an id: the
client's ``X-Request-Id`` when it is a plausible one (1 to 128 characters of ``A-Z a-z 0-9 . _ : @ / + = -``;
anything else is replaced, never echoed: it would end up in logs and in other systems' headers), else a
new one (32 hex digits). The id is

* in a context variable (:data:`REQUEST_ID`) for the request's lifetime, so every log line written while
  it is served carries it (:class:`~.logs.RequestIdFilter`), the tasks it starts included;
* sent to the model pod as ``X-Request-Id`` (:func:`pod_headers`), on every attempt;
* the ``X-Request-Id`` of the answer, whatever answers (a route, an error handler, a pod's error passed
  through: one value, the router's).

The trace context (W3C ``traceparent``) is the :mod:`.tracing` tracer's: it opens the request's server
span (or, with tracing off, takes the client's ``traceparent`` as it is, or starts one) around the app.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubediffusion.api.tracecontext import REQUEST_ID_HEADER, accepted_request_id, new_request_id
from kubediffusion.router.tracing import Tracer

__all__ = ["REQUEST_ID_HEADER", "RequestContextMiddleware", "accepted_request_id", "current_request_id"]

REQUEST_ID: ContextVar[str | None] = ContextVar("kubediffusion_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accepted_request_id(headers.get(REQUEST_ID_HEADER)) or new_request_id()
        token = REQUEST_ID.set(request_id)
        try:
            with self.tracer.server_span(scope, headers, request_id) as span:

                async def send_with_id(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        response_headers = MutableHeaders(scope=message)
                        del response_headers[REQUEST_ID_HEADER]  # a pod's, passed through: ours is the one
                        response_headers[REQUEST_ID_HEADER] = request_id
                        span.set("http.response.status_code", message["status"])
                    await send(message)

                await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
