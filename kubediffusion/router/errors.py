"""Router-only errors, on top of the shared tree in :mod:`kubediffusion.api.errors`.

    APIError (kubediffusion.api.errors)
    ├── ForbiddenError          403 invalid_request_error
    │   ├── InvalidSignatureError   code "invalid_signature": a tampered or unsigned file link
    │   └── ExpiredURLError         code "url_expired": a correctly signed link past its expiry
    ├── BadGatewayError         502 server_error, code "bad_upstream_response": a pod answered nonsense
    └── (everything else is raised with the shared classes: ModelNotFoundError, RateLimitError, ...)

All of them are rendered as OpenAI's error envelope by ``install_error_handlers``.
"""

from __future__ import annotations

from kubediffusion.api.errors import APIError


class ForbiddenError(APIError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "forbidden"


class InvalidSignatureError(ForbiddenError):
    default_code = "invalid_signature"


class ExpiredURLError(ForbiddenError):
    default_code = "url_expired"


class BadGatewayError(APIError):
    status_code = 502
    error_type = "server_error"
    default_code = "bad_upstream_response"
