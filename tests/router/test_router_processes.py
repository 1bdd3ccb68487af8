"""The official openai client -> `kubediffusion router` -> two `kubediffusion inference` processes."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from tests.router.stack import ALIAS, MODEL, Stack, start_stack, stop_stack

pytestmark = [pytest.mark.inference, pytest.mark.timeout(600)]

EXTRA = {"num_inference_steps": 2, "seed": 7}


def client(stack: Stack, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120, **kwargs)


def assert_png(data: bytes, size: tuple[int, int] = (64, 64)) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.size == size


def test_openai_client_gets_b64_images_n2(stack: Stack) -> None:
    raw = client(stack).images.with_raw_response.generate(
        model=MODEL, prompt="a lighthouse", n=2, size="64x64", response_format="b64_json", extra_body=EXTRA
    )
    assert raw.http_response.status_code == 200
    assert raw.http_response.headers["content-type"].startswith("application/json")
    body = raw.http_response.json()
    strict = ImagesResponse.model_validate(body, strict=True)
    assert isinstance(body["created"], int) and len(strict.data or []) == 2
    for item in strict.data or []:
        assert item.url is None and item.b64_json
        assert_png(base64.b64decode(item.b64_json, validate=True))


def test_openai_client_gets_signed_urls_that_serve_pngs(stack: Stack) -> None:
    result = client(stack).images.generate(
        model=ALIAS, prompt="a boat", n=2, size="64x64", response_format="url", extra_body=EXTRA
    )
    assert isinstance(result, ImagesResponse) and result.data and len(result.data) == 2
    for item in result.data:
        assert item.b64_json is None and item.url and item.url.startswith(f"{stack.url}/v1/images/files/")
        fetched = httpx.get(item.url, timeout=10)
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert_png(fetched.content)
    tampered = httpx.get(result.data[0].url.replace("expires=", "expires=9"), timeout=10)  # type: ignore[union-attr]
    assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "invalid_signature"


def test_no_model_named_uses_the_default_model(stack: Stack) -> None:
    result = client(stack).images.generate(prompt="a tree", size="64x64", response_format="b64_json", extra_body=EXTRA)
    assert result.data and result.data[0].b64_json


def test_models_list_through_the_sdk(stack: Stack) -> None:
    models = client(stack).models.list()
    assert [m.id for m in models.data] == [MODEL]
    extra = models.data[0].model_extra or {}
    assert extra["aliases"] == [ALIAS] and extra["readyReplicas"] == 2


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "4096x4096"}, "size"),
        ({"n": 9}, "n"),
        ({"size": "64x64", "extra_body": {"num_inference_steps": 500}}, "num_inference_steps"),
        ({"size": "64x64", "extra_body": {"guidance_scale": "lots"}}, "guidance_scale"),
        ({"size": "64x64", "extra_body": {"unknown_field": 1}}, "unknown_field"),
    ],
)
def test_bad_input_is_400_before_touching_a_pod(stack: Stack, kwargs: dict[str, Any], param: str) -> None:
    before = [pod.request_count() for pod in stack.pods]
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).images.generate(model=MODEL, prompt="x", **kwargs)
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error" and error["param"] == param
    assert [pod.request_count() for pod in stack.pods] == before


def test_unknown_model_is_404_model_not_found(stack: Stack) -> None:
    before = [pod.request_count() for pod in stack.pods]
    with pytest.raises(openai.NotFoundError) as info:
        client(stack).images.generate(model="dall-e-3", prompt="x")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"
    assert [pod.request_count() for pod in stack.pods] == before


def test_requests_are_spread_over_both_pods(stack: Stack) -> None:
    before = [pod.request_count() for pod in stack.pods]
    sdk = client(stack)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            sdk.images.generate(prompt="x", size="64x64", response_format="b64_json", extra_body=EXTRA)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    gained = [pod.request_count() - b for pod, b in zip(stack.pods, before, strict=True)]
    assert sum(gained) == 6 and all(g >= 1 for g in gained)


def test_killing_a_pod_mid_run_fails_over_then_503_when_none_is_left(own_stack: Stack) -> None:
    sdk = client(own_stack)
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 60
        for _ in range(40):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                sdk.images.generate(
                    prompt="x", size="64x64", response_format="b64_json", extra_body={"num_inference_steps": 8}
                )
                results.append("ok")
            except openai.APIError as exc:
                results.append(f"error: {exc}")

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while len(results) < 3 and time.monotonic() < deadline:  # traffic is flowing through both pods
        time.sleep(0.05)
    own_stack.pods[0].process.send_signal(signal.SIGKILL)
    own_stack.pods[0].process.wait(timeout=10)
    killed_at = len(results)
    while len(results) < killed_at + 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    assert len(results) >= killed_at + 6, "traffic stopped after the kill"
    assert results.count("ok") == len(results), [r for r in results if r != "ok"][:3]

    own_stack.pods[1].process.send_signal(signal.SIGKILL)
    own_stack.pods[1].process.wait(timeout=10)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.images.generate(prompt="x", size="64x64", response_format="b64_json")
    assert info.value.status_code == 503
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "server_error"
    # the router itself is still healthy
    assert httpx.get(f"{own_stack.url}/health", timeout=5).status_code == 200


def _pod_metric(pod_url: str, name: str) -> float:
    for line in httpx.get(f"{pod_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not found")


def test_client_that_leaves_the_router_is_dropped_from_the_pods_queue(tiny_model: Path, tmp_path: Path) -> None:
    """The router closes its pod request when its client goes away, so the pod never generates it."""
    stack = start_stack(tiny_model, tmp_path, pod_count=1)
    pod = stack.pods[0]
    busy = {"prompt": "busy", "n": 4, "size": "256x256", "num_inference_steps": 8}
    body = b'{"prompt": "nobody waits for this", "size": "64x64"}'
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            running = [
                pool.submit(httpx.post, f"{pod.url}/v1/images/generations", json=busy, timeout=300) for _ in range(3)
            ]
            deadline = time.monotonic() + 60

            def serving() -> dict[str, int]:
                return dict(httpx.get(f"{pod.url}/info", timeout=5).json()["serving"])

            while serving()["queuedImages"] != 8:  # one busy batch runs, two wait
                assert time.monotonic() < deadline, serving()
                time.sleep(0.02)
            host, port = stack.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as client:
                client.sendall(
                    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                while serving()["queuedImages"] < 9:
                    assert time.monotonic() < deadline, "the router's request never reached the pod's queue"
                    time.sleep(0.02)
            while _pod_metric(pod.url, 'kubediffusion_inference_requests_total{outcome="disconnected"}') != 1.0:
                assert time.monotonic() < deadline, "the pod still holds the request of a client that left"
                time.sleep(0.05)
            assert all(future.result().status_code == 200 for future in running)
        assert _pod_metric(pod.url, "kubediffusion_inference_images_total") == 12.0  # only the busy ones
    finally:
        stop_stack(stack)
