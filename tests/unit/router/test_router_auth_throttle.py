"""Brute force: an address that sent too many wrong API keys gets 429s, its keys not even compared,
until its budget refills; right keys and missing keys spend nothing, other addresses are untouched."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.api.errors import RateLimitError
from kubediffusion.router import auth
from kubediffusion.router.ratelimit import FailureThrottle

RIGHT, WRONG = "sk-right", "sk-guess"
BASE = "http://router.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_refuses_after_a_burst_and_refills_at_its_rate() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(rate=0.1, burst=3, clock=clock)
    throttle.check("a")  # an address never seen passes
    assert [throttle.failed("a") for _ in range(3)] == [False, False, True]
    with pytest.raises(RateLimitError) as refused:
        throttle.check("a")
    assert refused.value.status_code == 429 and refused.value.error_type == "rate_limit_error"
    assert refused.value.headers() == {"Retry-After": "10"}
    throttle.check("b")
    clock.now = 9.0
    with pytest.raises(RateLimitError) as still:
        throttle.check("a")
    assert still.value.headers() == {"Retry-After": "1"}
    clock.now = 10.0
    throttle.check("a")  # one attempt is back
    assert throttle.failed("a") is True


def test_rate_zero_turns_the_throttle_off() -> None:
    throttle = FailureThrottle(rate=0, burst=1, clock=FakeClock())
    for _ in range(100):
        assert throttle.failed("a") is False
        throttle.check("a")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"{RIGHT}\n")
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def generate(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v1/images/generations", json={"prompt": "x"}, headers=headers)


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many keys were compared, counted where auth.py compares them."""
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    return calls


async def test_wrong_keys_are_401_then_429_with_retry_after_and_the_key_is_not_compared(
    router: Any, clock: Any, keys: Path, comparisons: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with router(api_keys_file=keys, auth_failure_burst=10, auth_failure_rps=0.1) as client:
            guesses = [(await generate(client, bearer(f"{WRONG}-{i}"))).status_code for i in range(10)]
            compared = len(comparisons)
            refused = await generate(client, bearer(WRONG))
            right_refused = await generate(client, bearer(RIGHT))
            models = await client.get("/v1/models", headers=bearer(RIGHT))
            assert len(comparisons) == compared  # refused before any key was looked at
            clock.advance(10)  # one attempt is back
            right_again = await generate(client, bearer(RIGHT))  # spends nothing
            one_more_guess = await generate(client, bearer(WRONG))
            refused_again = await generate(client, bearer(WRONG))
    assert guesses == [401] * 10
    assert refused.status_code == right_refused.status_code == models.status_code == 429
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "10"
    assert right_again.status_code == 200
    assert one_more_guess.status_code == 401 and refused_again.status_code == 429
    assert WRONG not in caplog.text and RIGHT not in caplog.text
    assert caplog.text.count("too many wrong API keys") == 2  # once per time the budget ran out


async def test_right_keys_and_missing_keys_spend_nothing(router: Any, keys: Path) -> None:
    async with router(api_keys_file=keys, auth_failure_burst=3, rate_limit_rps=0) as client:
        rights = [(await generate(client, bearer(RIGHT))).status_code for _ in range(30)]
        missing = [(await generate(client, {})).status_code for _ in range(30)]
        guesses = [(await generate(client, bearer(WRONG))).status_code for _ in range(4)]
    assert rights == [200] * 30
    assert missing == [401] * 30
    assert guesses == [401, 401, 401, 429]


async def test_one_address_being_refused_leaves_the_others_alone(router: Any, keys: Path) -> None:
    async with router(api_keys_file=keys, auth_failure_burst=2) as app_client:
        app = app_client.app
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 1)), base_url=BASE) as bad,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.10", 1)), base_url=BASE) as ok,
        ):
            guesses = [(await generate(bad, bearer(WRONG))).status_code for _ in range(3)]
            other = await generate(ok, bearer(RIGHT))
            rotated = [
                (await generate(bad, {**bearer(RIGHT), "X-Forwarded-For": f"198.51.100.{i}"})).status_code
                for i in range(3)
            ]
    assert guesses == [401, 401, 429]
    assert other.status_code == 200
    assert rotated == [429, 429, 429]  # a spoofed header from an untrusted peer is no way out


async def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy(router: Any, keys: Path) -> None:
    async with router(api_keys_file=keys, auth_failure_burst=2, trusted_proxies="10.0.0.0/8") as app_client:
        transport = httpx.ASGITransport(app=app_client.app, client=("10.0.0.2", 1))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as proxy:
            attacker = {**bearer(WRONG), "X-Forwarded-For": "198.51.100.66"}
            guesses = [(await generate(proxy, attacker)).status_code for _ in range(3)]
            neighbour = await generate(proxy, {**bearer(RIGHT), "X-Forwarded-For": "198.51.100.7"})
    assert guesses == [401, 401, 429]
    assert neighbour.status_code == 200


async def test_auth_off_means_no_throttle(router: Any) -> None:
    async with router(auth_failure_burst=1, rate_limit_rps=0) as client:
        assert [(await generate(client, bearer(WRONG))).status_code for _ in range(5)] == [200] * 5
