"""Adapters and schedulers through the inference app with a fake backend (the real pipeline: tests/inference):
names and listing, what reaches the backend, batches split by adapter set and scheduler; the settings."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubediffusion.api.pipelines import PipelineChoice
from kubediffusion.inference.settings import InferenceSettings, settings_from_cli
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"
ADAPTERS = [{"name": "style-a", "path": "/m/adapters/style-a"}, {"name": "style-b", "path": "/b", "defaultScale": 0.5}]
SCHEDULER = {"name": "EulerDiscreteScheduler", "config": {"timestep_spacing": "trailing"}, "allowed": ["DDIMScheduler"]}


def with_options(tmp_path: Path, **overrides: Any) -> InferenceSettings:
    return settings_for(tmp_path, adapters=ADAPTERS, scheduler=SCHEDULER, **overrides)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KD_INFERENCE_"):
            monkeypatch.delenv(name)


async def test_models_lists_each_adapter_as_model_colon_adapter(tmp_path: Path) -> None:
    async with serve(with_options(tmp_path), lambda _: FakeBackend()) as (client, _):
        models = (await client.get("/v1/models")).json()["data"]
        info = (await client.get("/info")).json()["pipeline"]
    assert [model["id"] for model in models] == ["tiny", "tiny:style-a", "tiny:style-b"]
    assert models[0]["adapters"] == ["style-a", "style-b"]
    assert models[2]["parent"] == "tiny" and models[2]["adapter"] == {"name": "style-b", "defaultScale": 0.5}
    assert info["adapters"][0]["path"] == "/m/adapters/style-a"
    assert info["scheduler"]["config"] == {"timestep_spacing": "trailing"}
    assert info["safety"] == {
        "checker": "auto",
        "loadedChecker": None,
        "action": "reject",
        "blockedTerms": 0,
        "allowLowModeration": False,
    }


async def test_adapter_and_scheduler_choices_reach_the_backend(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(with_options(tmp_path), lambda _: backend) as (client, _):
        for request in (
            {"model": "tiny:style-a"},
            {"model": "dall-e-2:style-b"},
            {"adapters": [{"name": "style-a", "scale": 0.5}, {"name": "style-b"}], "scheduler": "DDIMScheduler"},
            {"model": "tiny"},
        ):
            response = await client.post(GENERATE, json={"prompt": "a", **request})
            assert response.status_code == 200, response.text
    assert [call[0].params.pipeline for call in backend.calls] == [
        PipelineChoice((("style-a", 1.0),)),
        PipelineChoice((("style-b", 0.5),)),
        PipelineChoice((("style-a", 0.5), ("style-b", 0.5)), "DDIMScheduler"),
        PipelineChoice(),
    ]


@pytest.mark.parametrize(
    ("request_", "status", "param"),
    [
        ({"model": "tiny:nope"}, 404, "model"),
        ({"adapters": [{"name": "nope"}]}, 404, "adapters"),
        ({"adapters": [{"name": "style-a", "scale": 2.5}]}, 400, "adapters.0.scale"),
        ({"scheduler": "LMSDiscreteScheduler"}, 400, "scheduler"),
    ],
)
async def test_unknown_adapters_and_schedulers_are_refused_before_the_queue(
    tmp_path: Path, request_: dict[str, Any], status: int, param: str
) -> None:
    backend = FakeBackend()
    async with serve(with_options(tmp_path), lambda _: backend) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", **request_})
        edit = await client.post(GENERATE, json={"prompt": "a", "stream": True, **request_})
    assert (response.status_code, response.json()["error"]["param"]) == (status, param)
    assert edit.status_code == status
    assert backend.calls == []


async def test_requests_with_different_adapter_sets_or_schedulers_never_share_a_batch(tmp_path: Path) -> None:
    backend = FakeBackend()
    async with serve(with_options(tmp_path, batch_window_ms=200), lambda _: backend) as (client, _):
        backend.gate.clear()
        blocker = asyncio.ensure_future(client.post(GENERATE, json={"prompt": "first"}))
        await poll(backend.running.is_set)  # the worker holds the first batch; the others queue behind it
        variants: list[dict[str, Any]] = [
            {"model": "tiny:style-a"},
            {"model": "tiny:style-b"},
            {"adapters": [{"name": "style-a"}]},
            {},
            {"scheduler": "DDIMScheduler"},
            {"model": "tiny:style-b"},
        ]
        pending = [asyncio.ensure_future(client.post(GENERATE, json={"prompt": "a", **v})) for v in variants]
        await asyncio.sleep(0.1)
        backend.gate.set()
        responses = await asyncio.gather(blocker, *pending)
        metrics = (await client.get("/metrics")).text
    assert all(response.status_code == 200 for response in responses)
    calls = [[job.params.pipeline for job in call] for call in backend.calls[1:]]
    assert all(len(set(call)) == 1 for call in calls)  # one adapter set and scheduler per pipeline call
    assert sorted(len(call) for call in calls) == [1, 1, 2, 2]  # a+a, b+b, base, DDIM
    assert "kubediffusion_inference_batch_size_count 5.0" in metrics  # the blocker, then four batches


def test_pipeline_settings_from_the_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_ADAPTERS", json.dumps(ADAPTERS))
    monkeypatch.setenv("KD_INFERENCE_SCHEDULER", json.dumps(SCHEDULER))
    monkeypatch.setenv("KD_INFERENCE_COMPONENTS", '{"unet": {"path": "/m/components/unet", "file": "u.safetensors"}}')
    monkeypatch.setenv("KD_INFERENCE_SAFETY", '{"checker": "none", "blockedTerms": ["x"], "allowLowModeration": true}')
    settings = settings_from_cli(["--safety.action", "blur"])
    assert [adapter.name for adapter in settings.adapters] == ["style-a", "style-b"]
    assert settings.adapters[1].default_scale == 0.5
    assert (settings.scheduler.name, settings.scheduler.config) == (
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
    )
    assert settings.components["unet"].file == "u.safetensors"
    assert (settings.safety.checker, settings.safety.action, settings.safety.blocked_terms) == ("none", "blur", ["x"])
    flagged = settings_from_cli(["--adapters", json.dumps(ADAPTERS[:1]), "--scheduler.allowed", '["DDIMScheduler"]'])
    assert flagged.adapters[0].path == "/m/adapters/style-a" and flagged.scheduler.allowed == ["DDIMScheduler"]


@pytest.mark.parametrize(
    "values",
    [
        {"adapters": [ADAPTERS[0], ADAPTERS[0]]},
        {"components": {"text_encoder": {"path": "/x"}}},
        {"engine": "stub", "adapters": ADAPTERS},
        {"engine": "stub", "scheduler": SCHEDULER},
        {"engine": "stub", "components": {"vae": {"path": "/v"}}},
        {"engine": "stub", "safety": {"checker": "pipeline"}},
    ],
)
def test_invalid_pipeline_settings_are_refused(tmp_path: Path, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings_for(tmp_path, **values)


def test_other_engines_take_blocked_terms(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, engine="stub", safety={"blockedTerms": ["x"], "checker": "none"})
    assert settings.safety.blocked_terms == ["x"]


async def test_an_engine_refuses_blocked_prompts_before_the_upstream_and_offers_no_adapters(tmp_path: Path) -> None:
    from tests.unit.inference.test_engine_server import FakeEngine
    from tests.unit.inference.test_engine_server import serve as serve_engine

    engine = FakeEngine()
    settings = settings_for(tmp_path, engine="stub", safety={"blockedTerms": ["forbidden fruit"], "checker": "none"})
    async with serve_engine(settings, engine) as (client, _):
        blocked = await client.post(GENERATE, json={"prompt": "a forbidden fruit"})
        adapter = await client.post(GENERATE, json={"prompt": "a", "model": "tiny:style-a"})
        allowed = await client.post(GENERATE, json={"prompt": "a fruit"})
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "moderation_blocked"
    assert adapter.status_code == 404
    assert allowed.status_code == 200 and "moderation" not in allowed.json()
    assert [job.params.prompt for job in engine.jobs] == ["a fruit"]
