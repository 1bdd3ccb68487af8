"""InferenceServer without HTTP: its phases, generate(), the model-name check, and the requests' outcome labels."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from kubediffusion.api.errors import (
    AdapterNotFoundError,
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
    ModerationBlockedError,
    QueueFullError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
)
from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ModelLoadError
from kubediffusion.inference.routes.images import outcome
from kubediffusion.inference.server import InferenceServer
from kubediffusion.inference.settings import InferenceSettings
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(30)


def params(n: int = 1, seed: int | None = None) -> GenerationParams:
    return GenerationParams(
        prompt="a",
        negative_prompt="",
        n=n,
        width=64,
        height=64,
        steps=2,
        guidance=0.0,
        seed=seed,
        output_format="png",
        output_compression=100,
    )


async def poll(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_generate_is_refused_until_warm_then_returns_base64_images(tmp_path: Path) -> None:
    backend = FakeBackend()
    release = threading.Event()

    def slow_loader(_: InferenceSettings) -> FakeBackend:
        assert release.wait(10)
        return backend

    server = InferenceServer(settings_for(tmp_path), slow_loader)
    await server.start()
    try:
        assert server.phase == "loading"
        with pytest.raises(ServiceUnavailableError) as refused:
            await server.generate(params())
        assert (refused.value.code, refused.value.retry_after) == ("model_not_ready", 5.0)
        release.set()
        await poll(lambda: server.phase == "ready")
        assert server.ready_at is not None
        images = (await server.generate(params(n=2, seed=5))).images
        assert [Image.open(io.BytesIO(base64.b64decode(b64))).size for b64 in images] == [(64, 64), (64, 64)]
        assert backend.calls[0][0].seeds == (5, 6)
    finally:
        await server.stop()
    assert backend.closed and server.backend is None


async def test_load_failure_is_phase_failed_with_the_reason_and_calls_on_fatal(tmp_path: Path) -> None:
    def broken(_: InferenceSettings) -> FakeBackend:
        raise ModelLoadError("model_index.json is missing")

    fatal: list[str] = []
    server = InferenceServer(settings_for(tmp_path), broken, on_fatal=fatal.append)
    await server.start()
    try:
        await poll(lambda: server.phase == "failed")
        assert fatal == ["model_index.json is missing"] and server.error == fatal[0]
        error = server.not_ready_error()
        assert error.code == "model_load_failed" and "model_index.json is missing" in error.message
        with pytest.raises(ServiceUnavailableError):
            server.require_ready()
    finally:
        await server.stop()


def test_the_served_name_and_aliases_are_answered_and_nothing_else(tmp_path: Path) -> None:
    server = InferenceServer(settings_for(tmp_path), lambda _: FakeBackend())
    for model in (None, "tiny", "dall-e-2"):
        server.check_model(model)
    with pytest.raises(ModelNotFoundError):
        server.check_model("dall-e-3")


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (QueueFullError("full", retry_after=1), "queue_full"),
        (ModelNotFoundError("x"), "model_not_found"),
        (AdapterNotFoundError("x", "tiny"), "model_not_found"),
        (ModerationBlockedError("input"), "moderation_blocked"),
        (ModerationBlockedError("output"), "moderation_blocked"),
        (ServiceUnavailableError("loading"), "not_ready"),
        (InvalidRequestError("bad"), "invalid"),
        (RequestTooLargeError("big"), "invalid"),
        (UpstreamTimeoutError("slow"), "error"),
        (APIError("boom"), "error"),
    ],
)
def test_failed_requests_are_counted_by_outcome(error: APIError, label: str) -> None:
    assert outcome(error) == label
