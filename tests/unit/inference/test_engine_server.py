"""The inference app with an engine instead of a backend (a fake Engine, through httpx.ASGITransport):
warming until the engine's first good probe, /readyz following the probe, refusals before queueing,
jobs of a batch failing alone, returned images checked, the job timeout, edits passed undecoded,
fields forwarded, and streams with an engine."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference.app import create_app
from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.errors import BadGatewayError, UpstreamNotReady
from kubediffusion.inference.engines.stub import picture
from kubediffusion.inference.settings import InferenceSettings
from tests.unit.api.sample_images import form, mask_png, png
from tests.unit.inference.fakes import settings_for
from tests.unit.inference.test_inference_app import poll

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"


class FakeEngine:
    """Answers stub pictures; ``healthy``, ``fail_prompt``, ``delay_s`` and ``answer`` break it."""

    def __init__(self, *, edit_kinds: tuple[str, ...] = ("img2img", "inpaint")) -> None:
        self.healthy = True
        self.jobs: list[ImageJob] = []
        self.fail_prompt: str | None = None
        self.delay_s = 0.0
        self.answer: Callable[[ImageJob], list[bytes]] | None = None
        self.closed = False
        self.capabilities = Capabilities(refused={"seed": "the fake has no seeds"})
        self._description = BackendDescription("fake", "upstream", "n/a", edit_kinds=edit_kinds)  # type: ignore[arg-type]

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        self.capabilities.check("fake", request)

    async def probe(self) -> None:
        if not self.healthy:
            raise UpstreamNotReady("the fake is down")

    async def generate(self, job: ImageJob) -> list[bytes]:
        self.jobs.append(job)
        await asyncio.sleep(self.delay_s)
        if job.params.prompt == self.fail_prompt:
            raise BadGatewayError("the fake failed this one")
        if self.answer is not None:
            return self.answer(job)
        return [picture(job.params.width, job.params.height, seed, b"") for seed in job.seeds]

    async def aclose(self) -> None:
        self.closed = True


def engine_settings(tmp_path: Path, **overrides: Any) -> InferenceSettings:
    values = {"engine": "openai", "engine_url": "http://engine.test", "engine_timeout_seconds": 1.0, **overrides}
    return settings_for(tmp_path, **values)


@asynccontextmanager
async def serve(settings: InferenceSettings, engine: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    def factory(_: InferenceSettings) -> Any:
        if isinstance(engine, Exception):
            raise engine
        return engine

    fatal: list[str] = []
    app = create_app(settings, on_fatal=fatal.append, engine_factory=factory)
    app.state.fatal = fatal
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference.test", timeout=10) as client:
            yield client, app


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def client(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(engine_settings(tmp_path), engine) as (http, app):
        await poll(lambda: app.state.server.phase == "ready")
        yield http


async def test_the_server_warms_until_the_engine_answers_then_readyz_follows_it(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.healthy = False
    async with serve(engine_settings(tmp_path), engine) as (http, app):
        await poll(lambda: app.state.server.phase == "warming")
        waiting = await http.post(GENERATE, json={"prompt": "x"})
        assert waiting.status_code == 503 and "the fake is down" in waiting.json()["error"]["message"]
        assert (await http.get("/health")).json()["phase"] == "warming"
        engine.healthy = True
        await poll(lambda: app.state.server.phase == "ready", within=5)
        assert (await http.get("/readyz")).status_code == 200
        engine.healthy = False
        await asyncio.sleep(1.05)  # the probe's outcome is kept for a second
        down = await http.get("/readyz")
        assert down.status_code == 503 and down.json()["error"]["code"] == "upstream_not_ready"
        assert "kubediffusion_inference_ready 0.0" in (await http.get("/metrics")).text
        assert (await http.get("/health")).status_code == 200  # alive all the same
    assert engine.closed


async def test_an_engine_that_cannot_be_made_fails_the_server_with_its_reason(tmp_path: Path) -> None:
    async with serve(engine_settings(tmp_path), ModelLoadError("no engine_model")) as (http, app):
        await poll(lambda: app.state.server.phase == "failed")
        assert app.state.fatal == ["no engine_model"]
        assert (await http.get("/health")).status_code == 503


async def test_a_refused_field_is_a_400_naming_it_before_anything_is_queued(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    refused = await client.post(GENERATE, json={"prompt": "x", "seed": 4, "size": "64x64"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"
    partials = await client.post(GENERATE, json={"prompt": "x", "stream": True, "partial_images": 2})
    assert partials.status_code == 400 and partials.json()["error"]["param"] == "partial_images"
    assert engine.jobs == []


async def test_jobs_of_one_batch_fail_alone(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.fail_prompt = "bad"
    good, bad = await asyncio.gather(
        client.post(GENERATE, json={"prompt": "good", "n": 2}), client.post(GENERATE, json={"prompt": "bad"})
    )
    assert good.status_code == 200 and len(good.json()["data"]) == 2
    assert bad.status_code == 502 and bad.json()["error"]["message"] == "the fake failed this one"
    assert sorted(len(job.seeds) for job in engine.jobs) == [1, 2]


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (lambda job: [], "returned 0 images, 1 were asked for"),
        (lambda job: [b"GIF89a not an image"], "not a valid image"),
        (lambda job: [picture(32, 32, 1, b"")], "returned a 32x32 image, 64x64 was asked for"),
    ],
)
async def test_what_the_engine_returns_is_checked(
    client: httpx.AsyncClient, engine: FakeEngine, answer: Callable[[ImageJob], list[bytes]], detail: str
) -> None:
    engine.answer = answer
    response = await client.post(GENERATE, json={"prompt": "x"})
    assert response.status_code == 502 and detail in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "bad_upstream_response"


async def test_a_job_longer_than_the_engine_timeout_is_a_504(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.delay_s = 5
    started = time.monotonic()
    response = await client.post(GENERATE, json={"prompt": "x"})
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 3


async def test_openai_fields_are_forwarded_and_a_preset_style_is_not(tmp_path: Path, engine: FakeEngine) -> None:
    presets = {"noir": {"prompt": "{prompt}, noir"}}
    async with serve(engine_settings(tmp_path, presets=presets), engine) as (http, app):
        await poll(lambda: app.state.server.phase == "ready")
        assert (await http.post(GENERATE, json={"prompt": "a", "quality": "high", "style": "noir"})).status_code == 200
        assert (await http.post(GENERATE, json={"prompt": "b", "style": "vivid", "user": "u"})).status_code == 200
    first, second = engine.jobs
    assert (first.params.prompt, first.passthrough) == ("a, noir", (("quality", "high"),))
    assert second.passthrough == (("style", "vivid"), ("user", "u"))


async def test_edits_reach_the_engine_undecoded(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    image = png((64, 64))
    body, content_type = form({"prompt": "p", "n": "2"}, [("image", image), ("mask", mask_png((64, 64)))])
    response = await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
    assert response.status_code == 200 and len(response.json()["data"]) == 2
    (job,) = engine.jobs
    assert job.source is None and job.upload is not None and job.upload.image.data == image
    assert (job.kind, job.upload.strength) == ("inpaint", 1.0)
    body, content_type = form({"n": "1"}, [("image", image)])
    variation = await client.post("/v1/images/variations", content=body, headers={"content-type": content_type})
    assert variation.status_code == 200 and engine.jobs[-1].kind == "img2img"
    assert engine.jobs[-1].upload is not None and engine.jobs[-1].upload.strength == 0.6


async def test_an_engine_without_edits_refuses_them(tmp_path: Path) -> None:
    async with serve(engine_settings(tmp_path), FakeEngine(edit_kinds=())) as (http, app):
        await poll(lambda: app.state.server.phase == "ready")
        body, content_type = form({"prompt": "p"}, [("image", png((64, 64)))])
        response = await http.post("/v1/images/edits", content=body, headers={"content-type": content_type})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_model"


async def test_a_stream_without_partial_images_sends_the_completed_images(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATE, json={"prompt": "x", "n": 2, "stream": True})
    events = [(event.event, event.json()) for event in SSEDecoder().feed(response.content)]
    assert [name for name, _ in events] == ["image_generation.completed"] * 2
    assert all(base64.b64decode(data["b64_json"]).startswith(b"\x89PNG") for _, data in events)


async def test_models_and_info_describe_the_engine(client: httpx.AsyncClient) -> None:
    (card,) = (await client.get("/v1/models")).json()["data"]
    assert (card["engine"], card["pipeline"], card["supports"]["edits"]) == ("openai", "fake", True)
    info = (await client.get("/info")).json()
    assert info["engine"] == {
        "name": "openai",
        "url": "http://engine.test",
        "model": None,
        "timeoutSeconds": 1.0,
        "healthy": True,
        "reason": None,
    }
    assert info["model_dir"] is None
