"""Errors that reach an API client, and the one place they become OpenAI's error envelope.

Every 4xx/5xx answered by the router or an inference server has the shape
``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``.

Hierarchy (raise the most specific one; the handler installed by ``install_error_handlers``
renders it):

    APIError                      base; status 500, type "server_error"
    ├── InvalidRequestError       400 invalid_request_error (param names the field)
    │   ├── UnsupportedMediaTypeError  400, wrong Content-Type (OpenAI answers 400, not 415)
    │   ├── BadFramingError       400, a Content-Length the body cannot be framed by (connection closed)
    │   └── ModerationBlockedError  400 image_generation_user_error, code "moderation_blocked" (OpenAI's):
    │                             a blocked prompt (stage "input") or every image flagged (stage "output")
    ├── AuthenticationError       401 invalid_request_error, code "invalid_api_key"
    ├── NotFoundError             404 invalid_request_error
    │   └── ModelNotFoundError    404, code "model_not_found", param "model"
    │       └── AdapterNotFoundError  404, code "model_not_found": an adapter the model does not have
    ├── RequestTimeoutError       408 invalid_request_error, the body stalled (connection closed)
    ├── RequestTooLargeError      413 invalid_request_error
    ├── RateLimitError            429 rate_limit_error (Retry-After)
    ├── QueueFullError            429 rate_limit_error, code "queue_full" (Retry-After)
    ├── ServiceUnavailableError   503 server_error (Retry-After)
    └── UpstreamTimeoutError      504 server_error

A client mistake is always a 4xx: the official client retries 5xx, which multiplies GPU work. A client
that hangs up while sending its body (starlette's ``ClientDisconnect``) is no error at all: one info line.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None
    close_connection = False  # answer with "Connection: close": what is left of the request cannot be trusted

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        headers = {"Connection": "close"} if self.close_connection else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return headers


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedMediaTypeError(InvalidRequestError):
    default_code = "unsupported_media_type"


class BadFramingError(InvalidRequestError):
    default_code = "invalid_content_length"
    close_connection = True


class ModerationBlockedError(InvalidRequestError):
    """OpenAI's shape: type ``image_generation_user_error``, code ``moderation_blocked``, and
    ``moderation_details.moderation_stage``. The message never says which term or concept matched."""

    error_type = "image_generation_user_error"
    default_code = "moderation_blocked"

    def __init__(self, stage: Literal["input", "output"], *, param: str | None = None) -> None:
        detail = (
            "Your prompt contains a term this model does not accept."
            if stage == "input"
            else "The generated images were flagged by the model's safety checker."
        )
        super().__init__(f"Your request was rejected by the safety system. {detail}", param=param)
        self.stage = stage

    def envelope(self) -> dict[str, Any]:
        envelope = super().envelope()
        envelope["error"]["moderation_details"] = {"moderation_stage": self.stage}
        return envelope


class AuthenticationError(APIError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class AdapterNotFoundError(ModelNotFoundError):
    def __init__(self, adapter: str, model: str, *, param: str = "adapters") -> None:
        of = f" of model '{model}'" if model else ""
        NotFoundError.__init__(self, f"The adapter '{adapter}'{of} does not exist.", param=param)


class RequestTimeoutError(APIError):
    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"
    close_connection = True


class RequestTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QueueFullError(RateLimitError):
    default_code = "queue_full"


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class UpstreamTimeoutError(APIError):
    status_code = 504
    error_type = "server_error"
    default_code = "upstream_timeout"


def error_envelope(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": _printable(message), "type": error_type, "param": _printable(param), "code": code}}


def _printable(text: str | None) -> str | None:
    """Client text echoed in an error (a model name, a parameter) may hold an unpaired surrogate, which no
    UTF-8 body can carry: it is written as its escape (``\\ud800``) instead of failing the answer with a 500."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers())


def validation_error_from_pydantic(errors: list[Any]) -> InvalidRequestError:
    """The first pydantic/FastAPI validation error, as OpenAI would word it."""
    if not errors:
        return InvalidRequestError("Invalid request.")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    message = str(first.get("msg", "Invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON.", code="invalid_json"
        )
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if param is None:  # about the body as a whole, e.g. a key that is not text
        return InvalidRequestError(f"Invalid request body: {message}.", code="invalid_value")
    return InvalidRequestError(f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a request can end in to the OpenAI envelope, once for the whole app."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error_from_pydantic(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: APIError
        if exc.status_code == 404:
            error = NotFoundError("Unknown request URL. Please check the URL and method.")
        elif exc.status_code == 405:
            error = InvalidRequestError("Method not allowed for this URL.", code="method_not_allowed")
            return JSONResponse(error.envelope(), status_code=405)
        elif exc.status_code < 500:
            error = InvalidRequestError(str(exc.detail))
            return JSONResponse(error.envelope(), status_code=exc.status_code)
        else:
            error = APIError(str(exc.detail))
        return error_response(error)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, _: ClientDisconnect) -> Response:
        # Not an error: the client hung up while sending its body. One line, no traceback; the answer
        # below goes nowhere (the server drops what is sent on a closed connection).
        client = request.client.host if request.client else "unknown"
        log.info("client %s disconnected while sending %s %s", client, request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(APIError("The server had an error while processing your request."))
