"""Errors of the engine adapters, on top of the shared tree in :mod:`kubediffusion.api.errors`.

    APIError (kubediffusion.api.errors)
    ├── InvalidRequestError     400: the upstream refused the request (its message), or a field the
    │                           engine cannot honour (``param`` names it, code "unsupported_parameter")
    ├── RateLimitError          429: the upstream said 429 (its Retry-After passed on)
    ├── UpstreamTimeoutError    504: the upstream job took longer than ``engine_timeout_seconds``
    └── BadGatewayError         502 server_error: the upstream failed (5xx), could not be reached,
        │                       answered something that is not its documented shape, or its job failed
        └── UpstreamAuthError   502, code "upstream_auth": it refused our credentials (401/403): the
                                operator's to fix, so not a 4xx the client would try to correct

``UpstreamNotReady`` is no API error: the health check failed; ``/readyz`` turns it into a 503.
"""

from __future__ import annotations

from kubediffusion.api.errors import APIError, InvalidRequestError


class BadGatewayError(APIError):
    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"


class UpstreamAuthError(BadGatewayError):
    default_code = "upstream_auth"


class UpstreamNotReady(Exception):
    """The upstream's health check failed; the message says how."""


def unsupported(param: str, message: str) -> InvalidRequestError:
    """A field this engine cannot honour: refused, never dropped."""
    return InvalidRequestError(message, param=param, code="unsupported_parameter")
