from __future__ import annotations

import asyncio

import httpx
import pytest

from kubediffusion.api.errors import ServiceUnavailableError, UpstreamTimeoutError
from kubediffusion.router.balancer import Balancer
from kubediffusion.router.forwarding import (
    EDITS_PATH,
    GENERATIONS_PATH,
    VARIATIONS_PATH,
    Forwarder,
    is_retryable_error,
    is_retryable_status,
)
from kubediffusion.router.routing import ModelEntry

A, B, C = "http://127.0.9.1:8000", "http://127.0.9.2:8000", "http://127.0.9.3:8000"
REQ = httpx.Request("POST", A)


@pytest.mark.parametrize(
    ("status", "retry"),
    [(200, False), (400, False), (404, False), (429, True), (500, False), (502, False), (503, True), (504, False)],
)
def test_only_429_and_503_from_a_pod_are_retried(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (httpx.ConnectError("refused", request=REQ), True),
        (httpx.ConnectTimeout("slow connect", request=REQ), True),
        (httpx.PoolTimeout("pool", request=REQ), True),
        (httpx.RemoteProtocolError("disconnected without response", request=REQ), True),
        (httpx.ReadError("connection reset", request=REQ), True),
        (httpx.ReadTimeout("still generating", request=REQ), False),
        (httpx.WriteTimeout("slow write", request=REQ), False),
    ],
)
def test_transport_errors_that_mean_another_pod_should_try(exc: httpx.HTTPError, retry: bool) -> None:
    assert is_retryable_error(exc) is retry


def test_read_timeouts_are_retried_only_when_configured() -> None:
    assert is_retryable_error(httpx.ReadTimeout("x", request=REQ), retry_read_timeouts=True)


def make(
    handler: object, endpoints: tuple[str, ...] = (A, B), max_attempts: int = 3
) -> tuple[Forwarder, ModelEntry, list[str]]:
    seen: list[str] = []

    async def record(request: httpx.Request) -> httpx.Response:
        seen.append(f"http://{request.url.host}:{request.url.port}")
        return handler(request)  # type: ignore[operator,no-any-return]

    client = httpx.AsyncClient(transport=httpx.MockTransport(record))
    forwarder = Forwarder(client, Balancer(), max_attempts=max_attempts, no_endpoint_retry_after=7)
    return forwarder, ModelEntry(name="m", endpoints=endpoints), seen


async def test_connection_failure_is_retried_on_another_pod() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.9.1":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, content=b"ok")

    forwarder, entry, seen = make(handler)
    upstream = await forwarder.forward(entry, b"{}", {})
    assert (upstream.status_code, await upstream.aread()) == (200, b"ok")
    assert seen == [A, B]


async def test_busy_pod_429_then_other_pod_answers() -> None:
    forwarder, entry, seen = make(lambda r: httpx.Response(429 if r.url.host == "127.0.9.1" else 200))
    assert (await forwarder.forward(entry, b"{}", {})).status_code == 200
    assert seen == [A, B]


async def test_when_every_pod_is_busy_the_last_answer_is_passed_through() -> None:
    forwarder, entry, seen = make(lambda r: httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {}}))
    upstream = await forwarder.forward(entry, b"{}", {})
    assert upstream.status_code == 429 and upstream.headers["retry-after"] == "3"
    assert sorted(seen) == [A, B]


async def test_attempts_are_bounded_and_no_pod_is_tried_twice() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    forwarder, entry, seen = make(refuse, endpoints=(A, B, C), max_attempts=2)
    with pytest.raises(ServiceUnavailableError) as info:
        await forwarder.forward(entry, b"{}", {})
    assert len(seen) == 2 and len(set(seen)) == 2
    assert info.value.headers() == {"Retry-After": "7"}


async def test_no_ready_pod_is_503_with_retry_after() -> None:
    forwarder, entry, seen = make(lambda r: httpx.Response(200), endpoints=())
    with pytest.raises(ServiceUnavailableError) as info:
        await forwarder.forward(entry, b"{}", {})
    assert info.value.retry_after == 7 and seen == []


async def test_read_timeout_is_504_and_not_retried() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    forwarder, entry, seen = make(slow)
    with pytest.raises(UpstreamTimeoutError):
        await forwarder.forward(entry, b"{}", {})
    assert len(seen) == 1


async def test_client_errors_from_a_pod_are_passed_through_untried_elsewhere() -> None:
    forwarder, entry, seen = make(lambda r: httpx.Response(400, json={"error": {"message": "bad"}}))
    upstream = await forwarder.forward(entry, b"{}", {})
    assert upstream.status_code == 400 and len(seen) == 1


async def test_a_pod_stays_counted_busy_until_its_body_is_consumed() -> None:
    balancer = Balancer()
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * 10)))
    forwarder = Forwarder(client, balancer)
    upstream = await forwarder.forward(ModelEntry(name="m", endpoints=(A,)), b"{}", {})
    assert balancer.in_flight(A) == 1
    assert b"".join([chunk async for chunk in upstream.aiter_raw()]) == b"x" * 10
    assert balancer.in_flight(A) == 0


async def test_a_cancelled_forward_releases_its_pod() -> None:
    """A request cancelled while the pod works (its client went away) must not stay counted in flight."""
    started = asyncio.Event()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    balancer = Balancer()
    async with httpx.AsyncClient(transport=httpx.MockTransport(never_answers)) as client:
        forwarder = Forwarder(client, balancer)
        task = asyncio.create_task(forwarder.forward(ModelEntry(name="m", endpoints=(A,)), b"{}", {}))
        await asyncio.wait_for(started.wait(), 5)
        assert balancer.in_flight(A) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert balancer.in_flight(A) == 0


@pytest.mark.parametrize("path", [GENERATIONS_PATH, EDITS_PATH, VARIATIONS_PATH])
async def test_every_image_path_is_forwarded_with_the_same_retry_rules(path: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "127.0.9.1":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(429 if request.url.host == "127.0.9.2" else 200, content=request.url.path.encode())

    forwarder, entry, seen = make(handler, endpoints=(A, B, C))
    upstream = await forwarder.forward(
        entry, b"--form--", {"content-type": "multipart/form-data; boundary=form"}, path=path
    )
    assert (upstream.status_code, await upstream.aread()) == (200, path.encode())
    assert sorted(seen) == [A, B, C]
