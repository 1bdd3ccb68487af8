"""The gauges the operator's autoscaler reads from every router replica, per model and namespace:
``kubediffusion_router_inflight_requests`` (sent to a pod, not finished) and
``kubediffusion_router_held_requests`` (waiting for a pod of a model waking from zero). Each must come back
to 0 whatever ends a request: an answer, a stream, a retry on another pod, an error, a client leaving."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from tests.support.asgi import HangingUpClient
from tests.unit.router.scaling import AWAKE, ZERO, FakeScaler, gauge, held, until
from tests.unit.router.streams import ASGIStreamClient, CuedStream, event_stream_response, partial
from tests.unit.router.test_router_app import A, B

INFLIGHT = "kubediffusion_router_inflight_requests"
HELD = "kubediffusion_router_held_requests"
GENERATIONS = "/v1/images/generations"
TINY = ModelEntry(name="tiny", namespace="team-a", endpoints=(A, B))


def inflight(app: Any, model: ModelEntry = TINY) -> float:
    return gauge(app, INFLIGHT, model.name, model.namespace)


def slow_pod(started: asyncio.Event, finish: asyncio.Event) -> Any:
    async def answer(request: httpx.Request) -> httpx.Response:
        started.set()
        await finish.wait()
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": "AAAA"}]})

    return answer


async def test_a_request_is_in_flight_from_its_forward_to_the_pods_answer(router: Any, pods: Any) -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    pods.behaviour[A] = pods.behaviour[B] = slow_pod(started, finish)
    async with router([TINY]) as client:
        assert inflight(client.app) == 0
        call = asyncio.create_task(client.post(GENERATIONS, json={"prompt": "x"}))
        await asyncio.wait_for(started.wait(), 5)
        assert inflight(client.app) == 1
        finish.set()
        assert (await asyncio.wait_for(call, 5)).status_code == 200
        assert inflight(client.app) == 0


async def test_a_stream_is_in_flight_until_it_ends_or_its_client_hangs_up(router: Any, pods: Any) -> None:
    stream = CuedStream([partial(0)], hold=True)
    pods.behaviour[A] = pods.behaviour[B] = lambda r: event_stream_response(stream)
    body = json.dumps({"prompt": "x", "stream": True, "partial_images": 1}).encode()
    async with router([TINY]) as client:
        call = ASGIStreamClient(client.app, GENERATIONS, body)
        task = call.start()
        await call.next_body()
        assert inflight(client.app) == 1  # the 200 and an event are sent: the pod still works
        call.hang_up()
        await asyncio.wait_for(stream.closed.wait(), 5)
        await asyncio.wait_for(task, 5)
        assert inflight(client.app) == 0


async def test_a_retry_on_another_pod_counts_the_request_once_and_ends_at_zero(router: Any, pods: Any) -> None:
    seen: list[float] = []

    def busy(request: httpx.Request) -> httpx.Response:
        seen.append(inflight(client.app))
        return httpx.Response(429, json={"error": {"message": "full"}}, headers={"retry-after": "1"})

    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(inflight(client.app))
        return pods.ok(request)

    pods.behaviour[A], pods.behaviour[B] = busy, ok
    async with router([replace(TINY, endpoints=(A, B))]) as client:
        answers = [await client.post(GENERATIONS, json={"prompt": "x"}) for _ in range(2)]
        assert inflight(client.app) == 0
    assert [a.status_code for a in answers] == [200, 200]
    assert seen and all(value == 1 for value in seen)  # never 2 for one request, however many pods it tries


async def test_errors_and_refusals_leave_nothing_in_flight(router: Any, pods: Any) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pods.behaviour[A] = pods.behaviour[B] = unreachable
    async with router([TINY]) as client:
        unreachable_answer = await client.post(GENERATIONS, json={"prompt": "x"})
        pods.behaviour[A] = pods.behaviour[B] = lambda r: httpx.Response(500, json={"error": {"message": "boom"}})
        failed = await client.post(GENERATIONS, json={"prompt": "x"})
        pods.behaviour[A] = pods.behaviour[B] = lambda r: httpx.Response(200, content=b"not json")
        garbled = await client.post(GENERATIONS, json={"prompt": "x", "response_format": "url"})
        assert inflight(client.app) == 0
    assert (unreachable_answer.status_code, failed.status_code, garbled.status_code) == (503, 500, 502)


async def test_a_client_that_leaves_mid_request_is_no_longer_in_flight(router: Any, pods: Any) -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    pods.behaviour[A] = pods.behaviour[B] = slow_pod(started, finish)
    async with router([TINY]) as client:
        hanging = HangingUpClient(client.app, GENERATIONS, b'{"prompt": "x"}', host="router.test")
        call = hanging.start()
        await asyncio.wait_for(started.wait(), 5)
        assert inflight(client.app) == 1
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert inflight(client.app) == 0


async def test_held_requests_count_as_held_then_in_flight(router: Any, pods: Any) -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    pods.behaviour[A] = slow_pod(started, finish)
    awake = replace(AWAKE, endpoints=(A,))
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        call = asyncio.create_task(client.post(GENERATIONS, json={"prompt": "x", "model": "elastic"}))
        await until(lambda: held(client.app) == 1, message="held")
        assert (gauge(client.app, HELD), inflight(client.app, ZERO)) == (1, 0)
        discovery.set_table(RoutingTable([awake]))
        await asyncio.wait_for(started.wait(), 5)
        assert (gauge(client.app, HELD), inflight(client.app, ZERO)) == (0, 1)
        finish.set()
        assert (await asyncio.wait_for(call, 5)).status_code == 200
        assert (gauge(client.app, HELD), inflight(client.app, ZERO)) == (0, 0)


async def test_metrics_show_both_gauges_for_every_known_model_and_drop_models_gone_idle(router: Any) -> None:
    discovery = StaticDiscovery(table=RoutingTable([TINY, ZERO]))
    async with router(discovery=discovery) as client:
        before = (await client.get("/metrics")).text
        discovery.set_table(RoutingTable([TINY]))
        after = (await client.get("/metrics")).text

    def series(text: str) -> dict[tuple[str, str, str], float]:
        return {
            (s.name, s.labels["model"], s.labels["namespace"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in (INFLIGHT, HELD)
        }

    assert series(before) == {
        (INFLIGHT, "tiny", "team-a"): 0,
        (HELD, "tiny", "team-a"): 0,
        (INFLIGHT, "elastic", "ns"): 0,
        (HELD, "elastic", "ns"): 0,
    }
    assert series(after) == {(INFLIGHT, "tiny", "team-a"): 0, (HELD, "tiny", "team-a"): 0}
