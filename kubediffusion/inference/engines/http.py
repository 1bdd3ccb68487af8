"""One ``httpx.AsyncClient`` per adapter, and the one place upstream answers become our errors.

Mapping (docs/engines/README.md): a 4xx is the request's fault, so a 400 carrying the upstream's own
message (and, from an OpenAI-shaped upstream, its ``param`` and ``code``); except 429, passed on as 429
with its Retry-After, and 401/403, our credentials, a 502 the operator fixes. A 5xx, a refused or reset
connection, or a body that is not what the engine documents is a 502. A read that takes longer than
``engine_timeout_seconds`` is a 504 (the adapter also bounds a whole job by the same time). A connect
timeout is a 502: nothing was sent, the engine is unreachable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from kubediffusion.api.errors import APIError, InvalidRequestError, RateLimitError, UpstreamTimeoutError
from kubediffusion.inference.engines.errors import BadGatewayError, UpstreamAuthError, UpstreamNotReady

MESSAGE_CHARS = 500  # of an upstream's error text quoted back
CONNECT_TIMEOUT_S = 10.0


class Upstream:
    """The engine at ``base_url`` (paths are joined to it), with its credential on every request."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
            auth=auth,
            headers=headers,
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # an in-cluster engine is never reached through the pod's proxy variables
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, if it is a 2xx; else the mapped error (see the module docstring)."""
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.ConnectTimeout as exc:
            raise BadGatewayError(f"Could not reach the {self.name} engine at {self.base_url}: {exc!r}") from None
        except httpx.TimeoutException:
            raise UpstreamTimeoutError(
                f"The {self.name} engine did not answer {method} {path} within {self.timeout:g}s."
            ) from None
        except httpx.HTTPError as exc:
            raise BadGatewayError(f"Could not reach the {self.name} engine at {self.base_url}: {exc!r}") from None
        if response.is_success:
            return response
        raise upstream_error(self.name, method, path, response)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON; a 502 when it is not JSON."""
        response = await self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise self.malformed(f"{method} {path} answered something that is not JSON: {snippet(response)}") from None

    async def content(self, path: str, **kwargs: Any) -> bytes:
        return (await self.request("GET", path, **kwargs)).content

    async def probe(self, path: str, within: float) -> httpx.Response:
        """``GET path`` for a health check: UpstreamNotReady unless it answers 2xx within ``within`` seconds."""
        try:
            response = await self.client.get(path, timeout=within)
        except httpx.HTTPError as exc:
            raise UpstreamNotReady(f"{self.name} at {self.base_url} did not answer GET {path}: {exc!r}") from None
        if not response.is_success:
            raise UpstreamNotReady(
                f"{self.name} answered GET {path} with HTTP {response.status_code}: {snippet(response)}"
            )
        return response

    def malformed(self, detail: str) -> BadGatewayError:
        return BadGatewayError(f"The {self.name} engine answered unexpectedly: {detail}", code="bad_upstream_response")

    async def aclose(self) -> None:
        await self.client.aclose()


def upstream_error(name: str, method: str, path: str, response: httpx.Response) -> APIError:
    status = response.status_code
    message, param, code = error_details(response)
    if status == 429:
        retry_after = _seconds(response.headers.get("retry-after"))
        return RateLimitError(f"The {name} engine is rate limiting: {message}", retry_after=retry_after)
    if status in (401, 403):
        return UpstreamAuthError(f"The {name} engine refused our credentials (HTTP {status}): {message}")
    if 400 <= status < 500:
        return InvalidRequestError(
            f"The {name} engine rejected the request (HTTP {status}): {message}",
            param=param,
            code=code or "upstream_rejected",
        )
    return BadGatewayError(f"The {name} engine failed {method} {path} (HTTP {status}): {message}")


def error_details(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, param, code) from the shapes engines use: OpenAI's ``{"error": {"message", ...}}``,
    FastAPI's ``{"detail": str | [{"msg", "loc"}]}`` (InvokeAI, AUTOMATIC1111), AUTOMATIC1111's
    ``{"error", "errors"}``, ComfyUI's ``{"error": {"message", "details"}, "node_errors"}``; else the text."""
    try:
        body: Any = response.json()
    except ValueError:
        return snippet(response), None, None
    if not isinstance(body, dict):
        return _clip(json.dumps(body)), None, None
    error = body.get("error")
    if isinstance(error, dict):
        parts = [str(error[key]) for key in ("message", "details") if error.get(key)]
        param, code = error.get("param"), error.get("code")
        return (
            _clip(": ".join(parts) or json.dumps(error)),
            param if isinstance(param, str) else None,
            code if isinstance(code, str) else None,
        )
    detail = body.get("detail")
    if isinstance(detail, list):
        return _clip("; ".join(_pydantic_message(item) for item in detail)), None, None
    for key in ("detail", "errors", "message", "error"):
        if isinstance(body.get(key), str) and body[key]:
            return _clip(body[key]), None, None
    return _clip(json.dumps(body)), None, None


def _pydantic_message(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{location}: {item.get('msg', '')}" if location else str(item.get("msg", ""))


def snippet(response: httpx.Response) -> str:
    return _clip(response.text.strip()) or f"(an empty body, HTTP {response.status_code})"


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
