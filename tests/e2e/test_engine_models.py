"""ImageModels of other engines end to end: one in front of AUTOMATIC1111 (the engine tier's fake webui,
served on 127.0.0.1 with ``--api-auth``, its credential a Secret the pod mounts as a file) and one of the
stub engine, through the real operator, the pod runner and the router, with the official openai client.

Neither has a cache: no claim, no cache Job; their pods run ``kubediffusion inference`` in adapter mode
(the pod runner runs it from this checkout whatever the image; the operator puts its adapter image there).
One stack for the module; tests run in file order.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import openai
import pytest
from kubernetes import client

from kubediffusion import __version__
from tests.cluster.operator_fixture import condition, get_model, list_objects, wait_phase
from tests.e2e.stack import E2EStack, decode_image
from tests.engines import fake_automatic1111
from tests.engines.upstream import Behaviour, FakeServer, pixel, seed_colour, served
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

WEBUI, STUB = "webui", "stub"
AUTH = ("kd", "s3cret")
SIZES = {"defaults": {"size": "64x64", "steps": 2}, "limits": {"minSize": 32, "maxSize": 256, "maxN": 4}}


@pytest.fixture(scope="module")
def webui() -> Iterator[tuple[FakeServer, Behaviour]]:
    behaviour = Behaviour()
    with served(fake_automatic1111.app(behaviour, auth=AUTH)) as server:
        yield server, behaviour


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack, webui: tuple[FakeServer, Behaviour]) -> E2EStack:
    server, _ = webui
    secret = {"metadata": {"name": "webui-auth"}, "stringData": {"auth": ":".join(AUTH)}}
    client.CoreV1Api(e2e_stack.api).create_namespaced_secret(e2e_stack.namespace, secret)
    engine = {
        "name": "automatic1111",
        "url": server.url,
        "credentialsSecretRef": {"name": "webui-auth", "key": "auth"},
        "maxN": 2,  # n=3 is batch_size 2 x n_iter 2 at the webui
        "timeoutSeconds": 30,
    }
    e2e_stack.apply_model(WEBUI, {"engine": engine, "aliases": ["sd-webui"], **SIZES})
    e2e_stack.apply_model(STUB, {"engine": {"name": "stub"}, **SIZES})
    e2e_stack.wait_ready(WEBUI)
    e2e_stack.wait_ready(STUB)
    return e2e_stack


def test_engine_models_are_ready_without_any_cache(stack: E2EStack) -> None:
    for name, engine in ((WEBUI, "automatic1111"), (STUB, "stub")):
        model = get_model(stack.api, stack.namespace, name) or {}
        assert model["status"]["phase"] == "Ready" and "cache" not in model["status"]
        assert condition(model, "CacheReady")["reason"] == "NotNeeded"
        [pod] = (
            client.CoreV1Api(stack.api)
            .list_namespaced_pod(stack.namespace, label_selector=f"kubediffusion.io/model={name}")
            .items
        )
        [server] = pod.spec.containers
        assert server.image == f"ghcr.io/kubediffusion/kubediffusion:{__version__}", "the small adapter image"
        assert {e.name: e.value for e in server.env}["KD_INFERENCE_ENGINE"] == engine
        assert "cache" not in {v.name for v in pod.spec.volumes}
    assert list_objects(stack.api, f"/apis/batch/v1/namespaces/{stack.namespace}/jobs") == []
    assert list_objects(stack.api, f"/api/v1/namespaces/{stack.namespace}/persistentvolumeclaims") == []
    assert (get_model(stack.api, stack.namespace, STUB) or {})["status"]["smokeTest"] is True


@pytest.mark.parametrize("n", [1, 3])
def test_the_webui_model_serves_through_the_router(
    stack: E2EStack, webui: tuple[FakeServer, Behaviour], n: int
) -> None:
    _, behaviour = webui
    behaviour.requests.clear()
    result = stack.client().images.generate(
        model="sd-webui",
        prompt="a lighthouse at dawn",
        n=n,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 100, "num_inference_steps": 3, "guidance_scale": 5.0},
    )
    assert len(result.data) == n
    images = [base64.b64decode(item.b64_json or "") for item in result.data]
    assert all(decode_image(item.b64_json or "").size == (64, 64) for item in result.data)
    # Image i is the webui's seed 100 + i (its fake paints the seed): ours and the webui's seed rule agree.
    assert [pixel(image) for image in images] == [seed_colour(100 + i) for i in range(n)]
    # The fake answers only with the right Basic credentials: the mounted Secret reached the webui.
    calls = [(r["batch_size"], r.get("n_iter", 1), r["steps"], r["cfg_scale"]) for r in behaviour.requests]
    assert calls == ([(1, 1, 3, 5.0)] if n == 1 else [(2, 2, 3, 5.0)])


@pytest.mark.parametrize("n", [1, 3])
def test_the_stub_model_serves_through_the_router(stack: E2EStack, n: int) -> None:
    def generate() -> list[str]:
        result = stack.client().images.generate(
            model=STUB, prompt="smoke", n=n, size="128x64", response_format="b64_json", extra_body={"seed": 7}
        )
        return [item.b64_json or "" for item in result.data]

    first = generate()
    assert len(first) == n and len(set(first)) == n, "n different pictures"
    assert all(decode_image(b64).size == (128, 64) for b64 in first)
    assert generate() == first, "same seed, same bytes, through the whole stack"


def test_the_webui_models_readiness_follows_the_webui(stack: E2EStack, webui: tuple[FakeServer, Behaviour]) -> None:
    _, behaviour = webui
    behaviour.healthy = False
    try:
        wait_for(
            lambda: stack.routed_endpoints(WEBUI) == 0,
            timeout=60,
            interval=0.3,
            message="the router stops sending to a pod whose engine is down",
        )
        wait_phase(stack.api, stack.namespace, WEBUI, "Loading", timeout=60)
        with pytest.raises(openai.APIStatusError) as caught:
            stack.client(max_retries=0).images.generate(model=WEBUI, prompt="x", size="64x64")
        assert caught.value.status_code == 503
        assert stack.routed_endpoints(STUB) == 1, "the other model is untouched"
    finally:
        behaviour.healthy = True
    stack.wait_ready(WEBUI)
    result = stack.client().images.generate(model=WEBUI, prompt="back", size="64x64", response_format="b64_json")
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)
