"""A property-based fuzz of the request schema through both apps, in-process.

Bodies from :mod:`fuzz_strategies` (JSON generations) and :mod:`fuzz_multipart` (edit and variation
uploads) go to the router (static discovery, its pod an httpx.MockTransport answering a valid images
response, or a valid event stream when asked to stream) and to the inference server (a fake backend).
Whatever the body: no 5xx, every non-2xx body is exactly the OpenAI envelope, every 2xx a valid
ImagesResponse or an event stream whose events are OpenAI's (or an error envelope). Bounded and
derandomized, so CI runs the same examples every time, in a few seconds.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from openai._models import validate_type
from openai.types import ImageEditStreamEvent, ImageGenStreamEvent
from PIL import Image

from kubediffusion.api.events import SSE_MEDIA_TYPE, SSEDecoder
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset
from kubediffusion.api.schema import ImagesResponse
from kubediffusion.inference.app import create_app as create_inference_app
from kubediffusion.router.app import create_app as create_router_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings
from tests.unit.api.sample_images import form
from tests.unit.api.sample_images import png as sample_png
from tests.unit.hardening.fuzz_multipart import EDITS, Upload, uploads
from tests.unit.hardening.fuzz_strategies import Body, bodies
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(120)

# Hypothesis keeps caches in ./.hypothesis even without an example database, written as soon as the
# session's tests are collected (so here, at import): keep them out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "kubediffusion-hypothesis")

FUZZ = settings(
    max_examples=200,
    derandomize=True,  # the same examples on every run: a CI failure is reproducible
    database=None,  # nothing written into the repository
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
ERROR_TYPES = {"invalid_request_error", "rate_limit_error", "server_error"}
LIMITS = GenerationLimits(min_size=64, max_size=128, max_n=4, max_steps=8, max_prompt_chars=2000)
DEFAULTS = GenerationDefaults(size="64x64", steps=2)
PRESETS = {"anime": StylePreset(prompt="{prompt}, anime style", negative_prompt="photo")}
PNG = Image.new("RGB", (8, 8))
Post = Callable[[Upload], httpx.Response]
GENERATIONS = "/v1/images/generations"
STREAM_EVENTS = (ImageGenStreamEvent, ImageEditStreamEvent)
TOKENS = {"text_tokens": 0, "image_tokens": 0}


def png_b64() -> str:
    buffer = io.BytesIO()
    PNG.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pod(request: httpx.Request) -> httpx.Response:
    """A pod's valid answer: n images, or a stream of one completed event when the request streams."""
    if request.headers.get("content-type", "").startswith("multipart/"):
        streams = b'name="stream"\r\n\r\ntrue\r\n' in request.content
        n, prefix = 1, "image_edit"
    else:
        payload = json.loads(request.content)
        streams, n, prefix = bool(payload.get("stream")), payload.get("n") or 1, "image_generation"
    if streams:
        usage = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0, "input_tokens_details": TOKENS}
        event = {"type": f"{prefix}.completed", "b64_json": png_b64(), "created_at": 1, "size": "auto"}
        event |= {"quality": "auto", "background": "auto", "output_format": "png", "usage": usage}
        body = f"event: {prefix}.completed\ndata: {json.dumps(event)}\n\n".encode()
        return httpx.Response(200, content=body, headers={"content-type": SSE_MEDIA_TYPE})
    return httpx.Response(200, json={"created": 1, "data": [{"b64_json": png_b64()}] * n, "output_format": "png"})


def check(response: httpx.Response) -> None:
    """The property: a 4xx envelope, a valid images response or a valid event stream, never a 5xx."""
    assert response.status_code < 500, response.text
    if response.is_success and response.headers["content-type"].startswith(SSE_MEDIA_TYPE):
        events = SSEDecoder().feed(response.content)
        assert events, response.content
        for event in events:
            if event.event == "error":
                check_envelope(event.json())
            else:
                assert any(_validates(kind, event.json()) for kind in STREAM_EVENTS), event
        return
    payload = response.json()
    if response.is_success:
        parsed = ImagesResponse.model_validate(payload)
        assert parsed.data and all((item.b64_json is None) != (item.url is None) for item in parsed.data)
        return
    assert response.headers["content-type"] == "application/json", response.headers
    check_envelope(payload)


def _validates(kind: Any, data: Any) -> bool:
    try:
        validate_type(type_=kind, value=data)  # as the openai client does in strict mode
    except ValueError:
        return False
    return True


def check_envelope(payload: Any) -> None:
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] in ERROR_TYPES, error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error


@contextmanager
def serving(app: FastAPI, base_url: str, ready: Callable[[], bool] = lambda: True) -> Iterator[Post]:
    """``app`` with its lifespan running on a portal's event loop; a blocking ``post(body)``."""
    portal: BlockingPortal
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a crash is a 500 to assert on
        client = httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30)
        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.01)

        def post(upload: Upload) -> httpx.Response:
            path, raw, content_type = upload
            headers = {"content-type": content_type.encode("latin-1")} if content_type is not None else {}
            return portal.call(partial(client.post, path, content=raw, headers=headers))

        try:
            yield post
        finally:
            portal.call(client.aclose)


@pytest.fixture(scope="module")
def router_post(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Post]:
    settings_ = RouterSettings(
        discovery="static",
        storage_dir=tmp_path_factory.mktemp("images"),
        signing_key="s" * 32,
        public_base_url="http://router.test",
        rate_limit_rps=0,
        global_rate_limit_rps=0,
        max_body_bytes=64 * 1024,  # so that huge values meet the limit too
        max_upload_bytes=256 * 1024,
    )
    entry = ModelEntry(
        name="tiny",
        endpoints=("http://127.0.9.1:8000",),
        aliases=("dall-e-2",),
        default=True,
        defaults=DEFAULTS,
        limits=LIMITS,
        presets=PRESETS,
    )
    app = create_router_app(
        settings_, discovery=StaticDiscovery(table=RoutingTable([entry])), transport=httpx.MockTransport(pod)
    )
    with serving(app, "http://router.test") as post:
        yield post


@pytest.fixture(scope="module")
def inference_post(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Post]:
    settings_ = settings_for(
        Path(tmp_path_factory.mktemp("model")),
        batch_window_ms=0,
        defaults=DEFAULTS,
        limits=LIMITS,
        presets=PRESETS,
        max_body_bytes=64 * 1024,
        max_upload_bytes=256 * 1024,
        warmup=False,
    )
    backend = FakeBackend()
    app = create_inference_app(settings_, lambda _: backend)
    with serving(app, "http://inference.test", ready=lambda: app.state.server.phase == "ready") as post:
        yield post


@FUZZ
@given(body=bodies)
def test_fuzzed_bodies_through_the_router_are_4xx_envelopes_or_images(router_post: Post, body: Body) -> None:
    check(router_post((GENERATIONS, *body)))


@FUZZ
@given(body=bodies)
def test_fuzzed_bodies_through_the_inference_server_are_4xx_envelopes_or_images(
    inference_post: Post, body: Body
) -> None:
    check(inference_post((GENERATIONS, *body)))


@FUZZ
@given(upload=uploads)
def test_fuzzed_uploads_through_the_router_are_4xx_envelopes_or_images(router_post: Post, upload: Upload) -> None:
    check(router_post(upload))


@FUZZ
@given(upload=uploads)
def test_fuzzed_uploads_through_the_inference_server_are_4xx_envelopes_or_images(
    inference_post: Post, upload: Upload
) -> None:
    check(inference_post(upload))


def test_the_fuzz_reaches_success_and_each_kind_of_error(router_post: Post, inference_post: Post) -> None:
    """The property is not vacuous: the same posting path answers images, 400, 404 and 413."""
    upload = form({"prompt": "a"}, [("image", sample_png())])
    for post in (router_post, inference_post):
        assert post((GENERATIONS, b'{"prompt": "a"}', "application/json")).status_code == 200
        assert post((GENERATIONS, b'{"prompt": "a", "n": 0}', "application/json")).status_code == 400
        assert post((GENERATIONS, b'{"prompt": "a", "model": "nope"}', "application/json")).status_code == 404
        assert post((GENERATIONS, b'{"prompt": "' + b"a" * 70_000 + b'"}', "application/json")).status_code == 413
        streamed = post((GENERATIONS, b'{"prompt": "a", "stream": true}', "application/json"))
        assert streamed.headers["content-type"].startswith(SSE_MEDIA_TYPE)
        assert post((EDITS, *upload)).status_code == 200
        assert post((EDITS, *form({"prompt": "a"}, [("image", b"no")]))).status_code == 400
        assert post((EDITS, *form({"prompt": "a" * 300_000}, [("image", sample_png())]))).status_code == 413
