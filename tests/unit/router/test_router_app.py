"""The router app in-process (httpx.ASGITransport) in front of fake pods (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kubediffusion.api.limits import GenerationLimits
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from tests.support.asgi import HangingUpClient

A, B = "http://127.0.9.1:8000", "http://127.0.9.2:8000"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def entry(name: str = "tiny", endpoints: tuple[str, ...] = (A,), **kwargs: Any) -> ModelEntry:
    return ModelEntry(name=name, endpoints=endpoints, **kwargs)


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return dict(error)


async def test_b64_response_is_the_pods_bytes_unchanged_when_every_image_has_an_id(router: Any, pods: Any) -> None:
    canned = b'{"created": 7, "data": [{"b64_json": "AAAA", "id": "img-1"}],   "odd spacing": true}'
    pods.behaviour[A] = lambda r: httpx.Response(200, content=canned, headers={"content-type": "application/json"})
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "a cat"})
    assert response.status_code == 200
    assert response.content == canned
    assert response.headers["content-type"] == "application/json"


async def test_b64_images_without_an_id_get_one_and_the_rest_of_the_answer_is_kept(router: Any, pods: Any) -> None:
    canned = b'{"created": 7, "data": [{"b64_json": "AAAA"}, {"b64_json": "BBBB"}], "odd": true}'
    pods.behaviour[A] = lambda r: httpx.Response(200, content=canned, headers={"content-type": "application/json"})
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "a cat", "n": 2})
    body = response.json()
    assert response.status_code == 200 and body["created"] == 7 and body["odd"] is True
    assert [item["b64_json"] for item in body["data"]] == ["AAAA", "BBBB"]
    ids = [item["id"] for item in body["data"]]
    assert len(set(ids)) == 2 and all(isinstance(i, str) and len(i) == 32 for i in ids)


async def test_request_body_is_forwarded_as_bytes_when_nothing_changes(router: Any, pods: Any) -> None:
    raw = b'{"prompt":  "a cat", "model": "tiny", "n": 2}'
    async with router() as client:
        await client.post("/v1/images/generations", content=raw, headers={"content-type": "application/json"})
    assert pods.requests[0].content == raw
    assert str(pods.requests[0].url) == A + "/v1/images/generations"
    assert "authorization" not in pods.requests[0].headers


async def test_alias_is_routed_and_renamed_for_the_pod(router: Any, pods: Any) -> None:
    models = [entry("sdxl", (A,), aliases=("dall-e-2",)), entry("flux", (B,), default=True)]
    async with router(models) as client:
        aliased = await client.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-2"})
        default = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert aliased.status_code == default.status_code == 200
    assert str(pods.requests[0].url).startswith(A) and json.loads(pods.requests[0].content)["model"] == "sdxl"
    assert str(pods.requests[1].url).startswith(B)


async def test_unknown_model_is_404_with_openai_envelope(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-3"})
    error = assert_envelope(response, 404, "model_not_found")
    assert error["param"] == "model" and pods.hits() == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "4096x4096"}, "size"),
        ({"prompt": "x", "n": 3}, "n"),
        ({"prompt": "x" * 101}, "prompt"),
        ({"prompt": "x", "num_inference_steps": 11}, "num_inference_steps"),
        ({"prompt": "x", "style": "cubist"}, "style"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"model": "tiny"}, "prompt"),
    ],
)
async def test_bad_input_is_400_and_never_reaches_a_pod(
    router: Any, pods: Any, body: dict[str, Any], param: str
) -> None:
    limits = GenerationLimits(max_size=512, max_n=2, max_prompt_chars=100, max_steps=10)
    async with router([entry(limits=limits)]) as client:
        response = await client.post("/v1/images/generations", json=body)
    assert assert_envelope(response, 400)["param"] == param
    assert pods.hits() == 0


async def test_malformed_json_and_wrong_content_type_are_400(router: Any, pods: Any) -> None:
    async with router() as client:
        broken = await client.post(
            "/v1/images/generations", content=b"{nope", headers={"content-type": "application/json"}
        )
        text = await client.post("/v1/images/generations", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert_envelope(broken, 400, "invalid_json")
    assert_envelope(text, 400)
    assert pods.hits() == 0


async def test_pod_client_errors_are_passed_through_as_is(router: Any, pods: Any) -> None:
    envelope = {"error": {"message": "nope", "type": "invalid_request_error", "param": "seed", "code": "x"}}
    pods.behaviour[A] = lambda r: httpx.Response(400, json=envelope)
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 400 and response.json() == envelope


async def test_failover_to_another_pod_then_503_when_none_is_left(router: Any, pods: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pods.behaviour[A] = refuse
    async with router([entry(endpoints=(A, B))]) as client:
        first = await client.post("/v1/images/generations", json={"prompt": "x"})
        pods.behaviour[B] = refuse
        second = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert first.status_code == 200
    assert_envelope(second, 503, "service_unavailable")
    assert int(second.headers["retry-after"]) >= 1


async def test_model_without_ready_pods_is_503_with_retry_after(router: Any) -> None:
    async with router([entry(endpoints=())]) as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert_envelope(response, 503)
    assert response.headers["retry-after"] == "5"


async def test_all_pods_busy_passes_the_pods_429_through(router: Any, pods: Any) -> None:
    busy = {"error": {"message": "queue full", "type": "rate_limit_error", "param": None, "code": "queue_full"}}
    pods.behaviour[A] = pods.behaviour[B] = lambda r: httpx.Response(429, json=busy, headers={"Retry-After": "2"})
    async with router([entry(endpoints=(A, B))]) as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 429 and response.json() == busy and response.headers["retry-after"] == "2"
    assert pods.hits() == 2


async def test_url_response_stores_images_and_serves_signed_links(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "n": 2, "response_format": "url"})
        assert response.status_code == 200, response.text
        sent = json.loads(pods.requests[0].content)
        urls = [item["url"] for item in response.json()["data"]]
        fetched = [await client.get(url) for url in urls]
        tampered = await client.get(urls[0].replace("sig=", "sig=0"))
        unsigned = await client.get(urlsplit(urls[0]).path)
        traversal = await client.get("/v1/images/files/..%2F..%2Fetc%2Fpasswd?expires=1&sig=a")
    assert sent["response_format"] == "b64_json"
    assert all("b64_json" not in item for item in response.json()["data"])
    assert len(set(urls)) == 2 and all(url.startswith("http://router.test/v1/images/files/") for url in urls)
    for image in fetched:
        assert image.status_code == 200 and image.content == PNG and image.headers["content-type"] == "image/png"
    assert_envelope(tampered, 403, "invalid_signature")
    assert_envelope(unsigned, 403, "invalid_signature")
    assert traversal.status_code == 404


async def test_expired_link_is_403(router: Any) -> None:
    async with router(url_ttl_seconds=1) as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
        url = response.json()["data"][0]["url"]
        query = dict(part.split("=") for part in urlsplit(url).query.split("&"))
        past = url.replace(f"expires={query['expires']}", "expires=1000")
        state = client.app.state.router  # resign with an old expiry: only expiry is wrong
        image_id = urlsplit(url).path.rsplit("/", 1)[1]
        past = past.replace(query["sig"], state.signer.signature(image_id, 1000))
        expired = await client.get(past)
    assert_envelope(expired, 403, "url_expired")


async def test_default_response_format_url_applies_when_the_request_has_none(router: Any, pods: Any) -> None:
    async with router(default_response_format="url") as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert "url" in response.json()["data"][0]


async def test_garbled_pod_answer_for_url_is_502(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: httpx.Response(200, json={"data": [{"b64_json": "!!not base64!!"}]})
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert_envelope(response, 502, "bad_upstream_response")


class _BrokenBody(httpx.AsyncByteStream):
    """A pod body that fails half-way (the pod died, or stalled past the read timeout)."""

    def __init__(self, error: type[httpx.TransportError]) -> None:
        self.error = error

    async def __aiter__(self) -> Any:
        yield b'{"created": 1, "data": [{"b64_json": "'
        raise self.error("pod went away mid-body")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(httpx.ReadError, 502, "bad_upstream_response"), (httpx.ReadTimeout, 504, "upstream_timeout")],
)
async def test_pod_failing_mid_body_is_a_gateway_error_not_a_500(
    router: Any, pods: Any, error: type[httpx.TransportError], status: int, code: str
) -> None:
    pods.behaviour[A] = lambda r: httpx.Response(200, stream=_BrokenBody(error))
    async with router() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
        assert client.app.state.router.balancer.in_flight(A) == 0
    assert_envelope(response, status, code)


async def test_pod_failing_while_sending_a_429_body_means_trying_another_pod(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: httpx.Response(429, stream=_BrokenBody(httpx.ReadError))
    async with router([entry(endpoints=(A, B))]) as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 200, response.text
    assert pods.hits() == 2


async def test_body_over_the_limit_is_413(router: Any, pods: Any) -> None:
    big = json.dumps({"prompt": "x" * 5000}).encode()

    async def chunks() -> Any:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    async with router(max_body_bytes=2048) as client:
        declared = await client.post(
            "/v1/images/generations", content=big, headers={"content-type": "application/json"}
        )
        streamed = await client.post(
            "/v1/images/generations", content=chunks(), headers={"content-type": "application/json"}
        )
    assert_envelope(declared, 413, "request_too_large")
    assert_envelope(streamed, 413, "request_too_large")
    assert pods.hits() == 0


async def test_cors_preflight_and_headers_for_configured_origins(router: Any) -> None:
    async with router(cors_origins=["https://app.example"]) as client:
        preflight = await client.options(
            "/v1/images/generations",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        allowed = await client.post(
            "/v1/images/generations", json={"prompt": "x"}, headers={"Origin": "https://app.example"}
        )
        other = await client.post(
            "/v1/images/generations", json={"prompt": "x"}, headers={"Origin": "https://evil.example"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_cors_preflight_allows_the_headers_the_openai_js_client_sends(router: Any) -> None:
    """openai-node (in a browser, dangerouslyAllowBrowser) adds X-Stainless-* headers to every request."""
    sdk_headers = (
        "authorization,content-type,accept,x-stainless-lang,x-stainless-package-version,x-stainless-os,"
        "x-stainless-arch,x-stainless-runtime,x-stainless-runtime-version,x-stainless-retry-count,"
        "x-stainless-timeout"
    )
    async with router(cors_origins=["https://app.example"]) as client:
        preflight = await client.options(
            "/v1/images/generations",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": sdk_headers,
            },
        )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"


async def test_no_cors_headers_unless_configured(router: Any) -> None:
    async with router() as client:
        response = await client.post(
            "/v1/images/generations", json={"prompt": "x"}, headers={"Origin": "https://app.example"}
        )
    assert "access-control-allow-origin" not in response.headers


async def test_models_list_has_openai_shape_and_metadata(router: Any) -> None:
    models = [entry("sdxl", (A, B), aliases=("dall-e-2",), default=True), entry("flux", ())]
    async with router(models) as client:
        listing = (await client.get("/v1/models")).json()
        one = await client.get("/v1/models/dall-e-2")
        missing = await client.get("/v1/models/nope")
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["flux", "sdxl"]
    sdxl = listing["data"][1]
    assert sdxl["object"] == "model" and sdxl["aliases"] == ["dall-e-2"] and sdxl["default"] is True
    assert sdxl["readyReplicas"] == 2 and "maxN" in sdxl["limits"] and "steps" in sdxl["defaults"]
    assert one.json()["id"] == "sdxl"
    assert_envelope(missing, 404, "model_not_found")


async def test_readyz_waits_for_discovery(router: Any) -> None:
    class Unsynced(StaticDiscovery):
        async def start(self) -> None:
            return None

        @property
        def synced(self) -> bool:
            return False

    async with router(discovery=Unsynced(table=RoutingTable())) as client:
        response = await client.get("/readyz")
        health = await client.get("/health")
    assert_envelope(response, 503)
    assert health.status_code == 200


async def test_unknown_path_is_an_envelope_not_fastapi_detail(router: Any) -> None:
    async with router() as client:
        response = await client.get("/v1/nope")
    assert_envelope(response, 404)


async def test_metrics_count_requests_and_attempts(router: Any) -> None:
    async with router() as client:
        await client.post("/v1/images/generations", json={"prompt": "x"})
        await client.post("/v1/images/generations", json={"prompt": "x", "model": "zzz"})
        text = (await client.get("/metrics")).text
    assert 'kubediffusion_router_requests_total{code="200",model="tiny"} 1.0' in text
    assert 'kubediffusion_router_requests_total{code="404",model="unknown"} 1.0' in text
    assert 'kubediffusion_router_upstream_attempts_total{model="tiny",outcome="200"} 1.0' in text
    assert "kubediffusion_router_models 1.0" in text


def test_png_fixture_round_trips() -> None:
    assert base64.b64decode(base64.b64encode(PNG)) == PNG


async def test_errors_before_the_route_still_carry_cors_headers(router: Any) -> None:
    async with router(cors_origins=["https://app.example"], max_body_bytes=2048) as client:
        response = await client.post(
            "/v1/images/generations",
            content=b"{" + b" " * 4096 + b"}",
            headers={"content-type": "application/json", "Origin": "https://app.example"},
        )
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "https://app.example"


async def test_client_that_disconnects_while_the_pod_works_cancels_the_pod_request(router: Any, pods: Any) -> None:
    """The pod drops a request whose connection closes (its queue slot and GPU work are freed), so
    the router must close its pod request when its own client goes away, and count the pod idle."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_pod(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return httpx.Response(200, json={"created": 1, "data": []})

    pods.behaviour[A] = slow_pod
    async with router() as client:
        app = client.app
        hanging = HangingUpClient(app, "/v1/images/generations", b'{"prompt": "x"}', host="router.test")
        call = hanging.start()
        await asyncio.wait_for(started.wait(), 5)
        assert app.state.router.balancer.in_flight(A) == 1
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert cancelled.is_set()
        assert app.state.router.balancer.in_flight(A) == 0


async def test_a_wrong_key_is_refused_before_it_spends_any_rate_budget(router: Any, tmp_path: Any, pods: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-right\n")
    right = {"Authorization": "Bearer sk-right"}
    async with router(api_keys_file=keys, rate_limit_rps=1, rate_limit_burst=1) as client:
        wrong = [
            await client.post("/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer no"})
            for _ in range(3)
        ]
        first = await client.post("/v1/images/generations", json={"prompt": "x"}, headers=right)
        second = await client.post("/v1/images/generations", json={"prompt": "x"}, headers=right)
    assert [r.status_code for r in wrong] == [401, 401, 401]
    assert first.status_code == 200 and second.status_code == 429
    assert pods.hits() == 1


async def test_metrics_count_refused_requests_once_each(router: Any, tmp_path: Any, pods: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-right\n")
    right = {"Authorization": "Bearer sk-right"}
    pods.behaviour[A] = lambda r: httpx.Response(200, json={"data": [{"b64_json": "!!not base64!!"}]})
    async with router(api_keys_file=keys, rate_limit_rps=1, rate_limit_burst=2) as client:
        await client.post("/v1/images/generations", json={"prompt": "x"})  # no key
        garbled = await client.post(
            "/v1/images/generations", json={"prompt": "x", "response_format": "url"}, headers=right
        )
        await client.post("/v1/images/generations", json={"prompt": "x"}, headers=right)  # the pod's 200 (b64)
        await client.post("/v1/images/generations", json={"prompt": "x"}, headers=right)  # over the limit
        text = (await client.get("/metrics")).text
    assert garbled.status_code == 502
    assert 'kubediffusion_router_requests_total{code="401",model="unknown"} 1.0' in text
    assert 'kubediffusion_router_requests_total{code="429",model="unknown"} 1.0' in text
    assert 'kubediffusion_router_requests_total{code="502",model="tiny"} 1.0' in text  # what the client got
    assert 'kubediffusion_router_requests_total{code="200",model="tiny"} 1.0' in text  # only the b64 one


async def test_a_client_that_leaves_is_counted_as_499(router: Any, pods: Any) -> None:
    started = asyncio.Event()

    async def slow_pod(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(30)
        return httpx.Response(200, json={"created": 1, "data": []})

    pods.behaviour[A] = slow_pod
    async with router() as client:
        hanging = HangingUpClient(client.app, "/v1/images/generations", b'{"prompt": "x"}', host="router.test")
        call = hanging.start()
        await asyncio.wait_for(started.wait(), 5)
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        text = (await client.get("/metrics")).text
    assert 'kubediffusion_router_requests_total{code="499",model="tiny"} 1.0' in text
