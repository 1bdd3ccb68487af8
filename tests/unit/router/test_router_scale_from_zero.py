"""Scale from zero: a request for a model at zero replicas waits at the router (bounded in number and time)
while the router asks for one replica, and goes to the first pod that becomes ready, in arrival order.

The discovery is a static one whose table the test flips ("no pod, at zero" -> "one pod"), as the
Kubernetes discovery does when a pod becomes ready; the scaler is a fake API server recording its writes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import httpx

from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import RoutingTable
from tests.support.asgi import HangingUpClient
from tests.unit.router.scaling import AWAKE, POD, WAKING, ZERO, FakeScaler, gauge, held, until
from tests.unit.router.test_router_app import assert_envelope

HELD = "kubediffusion_router_held_requests"
GENERATIONS = "/v1/images/generations"


def body(prompt: str = "x", **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "model": "elastic", **extra}


async def test_held_requests_are_answered_by_the_first_ready_pod_in_arrival_order(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        calls = []
        for index in range(5):
            calls.append(asyncio.create_task(client.post(GENERATIONS, json=body(f"p{index}"))))
            await until(lambda: held(client.app) == index + 1, message=f"request {index} held")  # noqa: B023
        assert pods.hits() == 0 and not any(call.done() for call in calls)
        assert gauge(client.app, HELD) == 5
        discovery.set_table(RoutingTable([AWAKE]))
        answers = await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert gauge(client.app, HELD) == 0 and held(client.app) == 0
    assert [answer.status_code for answer in answers] == [200] * 5
    assert [json.loads(r.content)["prompt"] for r in pods.requests] == [f"p{i}" for i in range(5)]
    assert all(str(r.url).startswith(POD) for r in pods.requests)


async def test_one_scale_write_wakes_the_model_for_every_request_held(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        first = [asyncio.create_task(client.post(GENERATIONS, json=body())) for _ in range(4)]
        await until(lambda: held(client.app) == 4 and scaler.patches == [("ns", "elastic")], message="4 held, woken")
        # Discovery has not seen the new replicas yet: a request in between starts no second wake-up ...
        first.append(asyncio.create_task(client.post(GENERATIONS, json=body())))
        await until(lambda: held(client.app) == 5, message="5 held")
        # ... nor do requests while the pod starts (spec.replicas 1, nothing ready: still held, not woken again).
        discovery.set_table(RoutingTable([WAKING]))
        later = [asyncio.create_task(client.post(GENERATIONS, json=body())) for _ in range(3)]
        await until(lambda: held(client.app) == 8, message="8 held")
        assert scaler.calls == [("ns", "elastic")] and scaler.patches == [("ns", "elastic")]
        discovery.set_table(RoutingTable([AWAKE]))
        answers = await asyncio.wait_for(asyncio.gather(*first, *later), 5)
        metrics = (await client.get("/metrics")).text
    assert [answer.status_code for answer in answers] == [200] * 8
    assert 'kubediffusion_router_wakeups_total{model="elastic",namespace="ns",outcome="scaled"} 1.0' in metrics
    assert "kubediffusion_router_wake_seconds_count 1.0" in metrics


async def test_a_model_that_returns_to_zero_is_woken_again(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        call = asyncio.create_task(client.post(GENERATIONS, json=body()))
        await until(lambda: len(scaler.patches) == 1, message="woken")
        discovery.set_table(RoutingTable([AWAKE]))
        assert (await asyncio.wait_for(call, 5)).status_code == 200
        scaler.replicas.clear()  # the autoscaler scaled it back to zero after its idle time
        discovery.set_table(RoutingTable([ZERO]))
        again = asyncio.create_task(client.post(GENERATIONS, json=body()))
        await until(lambda: len(scaler.patches) == 2, message="woken again")
        discovery.set_table(RoutingTable([AWAKE]))
        assert (await asyncio.wait_for(again, 5)).status_code == 200


async def test_a_full_hold_queue_answers_429_with_retry_after_at_once(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler, max_held_requests=2, hold_retry_after=17) as client:
        calls = [asyncio.create_task(client.post(GENERATIONS, json=body())) for _ in range(2)]
        await until(lambda: held(client.app) == 2, message="2 held")
        refused = await asyncio.wait_for(client.post(GENERATIONS, json=body()), 5)  # never a hang
        assert gauge(client.app, HELD) == 2
        discovery.set_table(RoutingTable([AWAKE]))
        answers = await asyncio.wait_for(asyncio.gather(*calls), 5)
    error = assert_envelope(refused, 429, "queue_full")
    assert refused.headers["retry-after"] == "17" and "elastic" in error["message"]
    assert [answer.status_code for answer in answers] == [200, 200] and pods.hits() == 2


async def test_with_no_room_to_hold_a_request_is_429_and_still_wakes_the_model(router: Any, pods: Any) -> None:
    scaler = FakeScaler()
    discovery = StaticDiscovery(table=RoutingTable([ZERO]))
    async with router(discovery=discovery, scaler=scaler, max_held_requests=0) as client:
        refused = await asyncio.wait_for(client.post(GENERATIONS, json=body()), 5)
        await until(lambda: scaler.patches == [("ns", "elastic")], message="woken")
    assert_envelope(refused, 429, "queue_full")
    assert "retry-after" in refused.headers and pods.hits() == 0


async def test_a_request_held_past_the_hold_timeout_is_503_with_retry_after(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler, hold_timeout_seconds=0.2, hold_retry_after=9) as client:
        answer = await asyncio.wait_for(client.post(GENERATIONS, json=body()), 5)
        assert gauge(client.app, HELD) == 0 and held(client.app) == 0
        metrics = (await client.get("/metrics")).text
    error = assert_envelope(answer, 503, "service_unavailable")
    assert answer.headers["retry-after"] == "9" and "did not start within 0.2 seconds" in error["message"]
    assert 'kubediffusion_router_requests_total{code="503",model="elastic"} 1.0' in metrics
    assert pods.hits() == 0 and scaler.patches == [("ns", "elastic")]


async def test_a_client_that_hangs_up_while_held_leaves_the_queue(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        staying = asyncio.create_task(client.post(GENERATIONS, json=body("stays")))
        await until(lambda: held(client.app) == 1, message="first held")
        hanging = HangingUpClient(client.app, GENERATIONS, json.dumps(body("leaves")).encode(), host="router.test")
        call = hanging.start()
        await until(lambda: held(client.app) == 2, message="second held")
        assert gauge(client.app, HELD) == 2
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert held(client.app) == 1 and gauge(client.app, HELD) == 1
        discovery.set_table(RoutingTable([AWAKE]))
        assert (await asyncio.wait_for(staying, 5)).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert [json.loads(r.content)["prompt"] for r in pods.requests] == ["stays"]  # the one that left never went
    assert hanging.sent[0]["status"] == 499
    assert 'kubediffusion_router_requests_total{code="499",model="elastic"} 1.0' in metrics


async def test_held_requests_are_refused_when_their_model_goes_away_or_stops_scaling_to_zero(
    router: Any, pods: Any
) -> None:
    other = replace(ZERO, name="other")
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO, other])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        deleted = asyncio.create_task(client.post(GENERATIONS, json=body()))
        fixed = asyncio.create_task(client.post(GENERATIONS, json={"prompt": "x", "model": "other"}))
        await until(lambda: held(client.app) == 1 and held(client.app, other) == 1, message="both held")
        # "elastic" is deleted; "other" gets fixed replicas (no autoscaling): it should serve, and does not.
        discovery.set_table(RoutingTable([replace(other, scales_to_zero=False, desired_replicas=1)]))
        gone, unavailable = await asyncio.wait_for(asyncio.gather(deleted, fixed), 5)
        assert gauge(client.app, HELD) == gauge(client.app, HELD, "other") == 0
    assert_envelope(gone, 404, "model_not_found")
    assert_envelope(unavailable, 503) and "retry-after" in unavailable.headers
    assert pods.hits() == 0


async def test_models_that_do_not_scale_to_zero_answer_503_at_once_and_are_never_woken(router: Any, pods: Any) -> None:
    # replicas: 0 set by hand (switched off), replicas 2 with no pod ready (broken or rolling), and a model
    # whose spec the operator refused (Failed): none of them waits, and none is woken.
    models = [
        replace(ZERO, name="off", scales_to_zero=False),
        replace(ZERO, name="broken", scales_to_zero=False, desired_replicas=2),
        replace(ZERO, name="refused", phase="Failed"),
    ]
    scaler = FakeScaler()
    async with router(models, scaler=scaler, no_endpoint_retry_after=4) as client:
        answers = [
            await asyncio.wait_for(client.post(GENERATIONS, json={"prompt": "x", "model": m.name}), 5) for m in models
        ]
    for answer in answers:
        assert_envelope(answer, 503, "service_unavailable")
        assert answer.headers["retry-after"] == "4" and "no ready replica" in answer.json()["error"]["message"]
    assert scaler.calls == [] and pods.hits() == 0


async def test_a_held_stream_goes_to_the_pod_once_it_is_ready(router: Any, pods: Any) -> None:
    events = b'event: image_generation.completed\ndata: {"type": "image_generation.completed", "b64_json": ""}\n\n'
    pods.behaviour[POD] = lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events)
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        call = asyncio.create_task(client.post(GENERATIONS, json=body(stream=True)))
        await until(lambda: held(client.app) == 1, message="held")
        discovery.set_table(RoutingTable([AWAKE]))
        answer = await asyncio.wait_for(call, 5)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert b"image_generation.completed" in answer.content


async def test_the_older_api_waits_for_a_waking_default_model_too(router: Any, pods: Any) -> None:
    discovery, scaler = StaticDiscovery(table=RoutingTable([ZERO])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        call = asyncio.create_task(client.post("/imagine/generate", json={"prompt": "x"}))
        await until(lambda: held(client.app) == 1, message="held")
        discovery.set_table(RoutingTable([AWAKE]))
        answer = await asyncio.wait_for(call, 5)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert scaler.patches == [("ns", "elastic")]
