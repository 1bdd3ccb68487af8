"""Router-only errors, on top of the shared tree in :mod:`kubediffusion.api.errors`.

    APIError (kubediffusion.api.errors)
    ├── ForbiddenError          403 invalid_request_error
    │   ├── InvalidSignatureError   code "invalid_signature": a tampered or unsigned file link
    │   ├── ExpiredURLError         code "url_expired": a correctly signed link past its expiry
    │   └── PermissionDeniedError   code "permission_denied": an admin-only endpoint (GET /v1/usage)
    ├── BadGatewayError         502 server_error, code "bad_upstream_response": a pod answered nonsense
    ├── QuotaExceededError      429 insufficient_quota (OpenAI's type and code), Retry-After: the next window
    ├── TenantsUnavailableError 503 server_error, code "tenants_unavailable": the tenants file is broken
    └── (everything else is raised with the shared classes: ModelNotFoundError, RateLimitError, ...)

All of them are rendered as OpenAI's error envelope by ``install_error_handlers``.
"""

from __future__ import annotations

from kubediffusion.api.errors import APIError, RateLimitError, ServiceUnavailableError


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


class QuotaExceededError(RateLimitError):
    """OpenAI's answer for a spent quota: 429, type and code ``insufficient_quota``, with a Retry-After at
    the start of the next quota window and ``X-Should-Retry: false`` (the official clients would otherwise
    retry a 429 at once, however far away the Retry-After is)."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "X-Should-Retry": "false"}


class TenantsUnavailableError(ServiceUnavailableError):
    default_code = "tenants_unavailable"


class PermissionDeniedError(ForbiddenError):
    default_code = "permission_denied"
