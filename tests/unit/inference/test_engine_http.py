"""Upstream answers become our errors in one place (engines/http.py): 4xx -> 400 with the upstream's
message, 429 -> 429, 401/403 -> 502 (ours to fix), 5xx, bad bodies and unreachable -> 502, timeouts -> 504."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kubediffusion.api.errors import APIError, InvalidRequestError, RateLimitError, UpstreamTimeoutError
from kubediffusion.inference.engines.errors import BadGatewayError, UpstreamAuthError, UpstreamNotReady
from kubediffusion.inference.engines.http import Upstream

pytestmark = pytest.mark.timeout(20)


def upstream(handler: Callable[[httpx.Request], httpx.Response]) -> Upstream:
    return Upstream("fake", "http://engine.test/base", timeout=5, transport=httpx.MockTransport(handler))


def answering(status: int, body: Any = None, *, text: str | None = None, **headers: str) -> Upstream:
    def handler(_: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return upstream(handler)


async def failure(engine: Upstream) -> APIError:
    with pytest.raises(APIError) as caught:
        await engine.json("POST", "/job", json={})
    return caught.value


async def test_paths_join_the_base_url_and_json_comes_back() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"ok": True})

    assert await upstream(handler).json("GET", "/status") == {"ok": True}
    assert seen == ["http://engine.test/base/status"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad size", "type": "invalid_request_error", "param": "size", "code": "x"}}, "bad size"),
        (
            {"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer"}]},
            "steps: value is not a valid",
        ),
        ({"detail": "Sampler not found"}, "Sampler not found"),
        ({"error": "RuntimeError", "detail": "", "body": "", "errors": "shape mismatch"}, "shape mismatch"),
        (
            {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "Value not in list: ckpt_name",
                },
                "node_errors": {},
            },
            "failed validation: Value not in",
        ),
    ],
)
async def test_a_4xx_is_a_400_with_the_upstreams_message(body: Any, message: str) -> None:
    error = await failure(answering(422, body))
    assert isinstance(error, InvalidRequestError) and error.status_code == 400
    assert message in error.message and "fake" in error.message


async def test_an_openai_shaped_4xx_keeps_its_param_and_code() -> None:
    body = {"error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": "bad_size"}}
    error = await failure(answering(400, body))
    assert (error.param, error.code) == ("size", "bad_size")


async def test_a_429_is_a_429_with_its_retry_after() -> None:
    error = await failure(answering(429, {"error": {"message": "slow down"}}, **{"retry-after": "7"}))
    assert isinstance(error, RateLimitError) and error.headers()["Retry-After"] == "7"


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_a_502_for_the_operator(status: int) -> None:
    error = await failure(answering(status, {"detail": "no"}))
    assert isinstance(error, UpstreamAuthError) and error.status_code == 502 and error.code == "upstream_auth"


@pytest.mark.parametrize("upstream_status", [500, 502, 503])
async def test_a_5xx_is_a_502(upstream_status: int) -> None:
    error = await failure(answering(upstream_status, text="<html>gateway</html>"))
    assert isinstance(error, BadGatewayError) and error.status_code == 502 and "gateway" in error.message


async def test_a_body_that_is_not_json_is_a_502() -> None:
    error = await failure(answering(200, text="not json"))
    assert error.status_code == 502 and error.code == "bad_upstream_response"


@pytest.mark.parametrize(
    ("exception", "status"),
    [
        (httpx.ReadTimeout("slow"), 504),
        (httpx.ConnectTimeout("unreachable"), 502),
        (httpx.ConnectError("refused"), 502),
        (httpx.RemoteProtocolError("reset"), 502),
    ],
)
async def test_transport_failures(exception: Exception, status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    error = await failure(upstream(handler))
    assert error.status_code == status
    assert isinstance(error, UpstreamTimeoutError if status == 504 else BadGatewayError)


async def test_a_probe_that_fails_says_why() -> None:
    with pytest.raises(UpstreamNotReady, match="HTTP 503"):
        await answering(503, {"detail": "loading"}).probe("/health", 1)
    assert (await answering(200, {}).probe("/health", 1)).status_code == 200
