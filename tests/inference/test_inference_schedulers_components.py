"""Scheduler choice and component overrides on the real tiny SD pipeline: the configured scheduler (with
its overrides) or the request's allowed one is the class that actually steps; a VAE directory or a bare
UNet state dict replaces the pipeline's own and changes the images; with adapters, the CUDA speed-ups
leave the UNet unfused and uncompiled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers
import torch
from safetensors.torch import load_file

from kubediffusion.inference.backend import ModelLoadError
from kubediffusion.inference.pipeline import load_backend
from kubediffusion.tinymodel import TINY_UNET_FILE
from tests.inference.tinyserve import serve, tiny_settings

pytestmark = [pytest.mark.inference, pytest.mark.timeout(300)]
GENERATE = "/v1/images/generations"
SCHEDULER = {
    "name": "EulerDiscreteScheduler",
    "config": {"timestep_spacing": "trailing"},
    "allowed": ["DDIMScheduler", "DPMSolverMultistepScheduler"],
}


async def image(client: Any, **request: Any) -> str:
    response = await client.post(GENERATE, json={"prompt": "a red fox", "seed": 5, **request})
    assert response.status_code == 200, response.text
    b64: str = response.json()["data"][0]["b64_json"]
    return b64


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(class, timestep_spacing) of every scheduler step taken, in this process."""
    taken: list[tuple[str, str]] = []
    for cls in (diffusers.EulerDiscreteScheduler, diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler):
        original = cls.step

        def step(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            taken.append((type(self).__name__, self.config.timestep_spacing))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)
    return taken


async def test_the_configured_and_requested_schedulers_are_the_classes_that_step(
    tiny_models: dict[str, Path], steps: list[tuple[str, str]]
) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, scheduler=SCHEDULER)
    async with serve(settings) as (client, _):
        default = await image(client)
        assert steps == [("EulerDiscreteScheduler", "trailing")] * 2  # the model's 2 steps
        steps.clear()
        ddim = await image(client, scheduler="DDIMScheduler")
        assert steps == [("DDIMScheduler", "trailing")] * 2  # the overrides apply to the allowed classes
        steps.clear()
        await image(client, scheduler="DPMSolverMultistepScheduler")
        assert {name for name, _ in steps} == {"DPMSolverMultistepScheduler"}
        steps.clear()
        again = await image(client, scheduler="EulerDiscreteScheduler")  # the default, by name
        assert steps == [("EulerDiscreteScheduler", "trailing")] * 2
        refused = await client.post(GENERATE, json={"prompt": "a", "scheduler": "LMSDiscreteScheduler"})
        info = (await client.get("/info")).json()["pipeline"]["scheduler"]
    assert again == default != ddim
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "scheduler"
    assert info["default"] == "EulerDiscreteScheduler" and info["allowed"] == SCHEDULER["allowed"]


async def test_trailing_spacing_changes_the_image(tiny_models: dict[str, Path]) -> None:
    async with serve(tiny_settings(tiny_models["sd"], warmup=False)) as (client, _):
        leading = await image(client)  # the tiny model's own: leading
    async with serve(tiny_settings(tiny_models["sd"], warmup=False, scheduler=SCHEDULER)) as (client, _):
        trailing = await image(client)
    assert leading != trailing


def test_a_misspelt_scheduler_setting_or_class_fails_the_load(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="has no setting timestep_spacng"):
        load_backend(tiny_settings(tiny_models["sd"], scheduler={"config": {"timestep_spacng": "trailing"}}))
    with pytest.raises(ModelLoadError, match="not a diffusers scheduler class"):
        load_backend(tiny_settings(tiny_models["sd"], scheduler={"allowed": ["StableDiffusionPipeline"]}))


async def test_component_overrides_replace_the_pipelines_own_and_change_the_output(
    tiny_extras: dict[str, Path],
) -> None:
    model = tiny_extras["sd"]
    vae = {"vae": {"path": str(model / "components" / "vae")}}
    unet = {"unet": {"path": str(model / "components" / "unet"), "file": TINY_UNET_FILE}}
    outputs = {}
    for name, components in (("base", {}), ("vae", vae), ("unet", unet), ("both", {**vae, **unet})):
        async with serve(tiny_settings(model, warmup=False, components=components)) as (client, app):
            outputs[name] = await image(client)
            backend = app.state.server.backend
            assert backend.description.components == tuple(components)
            if "unet" in components:
                loaded = backend.pipe.unet.conv_in.weight
                assert torch.equal(
                    loaded, load_file(str(model / "components" / "unet" / TINY_UNET_FILE))["conv_in.weight"]
                )
            info = (await client.get("/info")).json()["pipeline"]["components"]
            assert set(info) == set(components)
    assert len(set(outputs.values())) == 4


def test_component_overrides_that_do_not_fit_fail_the_load_clearly(tiny_extras: dict[str, Path]) -> None:
    model = tiny_extras["sd"]
    vae_weights = str(model / "components" / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="not a diffusers-format UNet2DConditionModel state dict"):
        load_backend(tiny_settings(model, components={"unet": {"path": vae_weights}}))
    with pytest.raises(ModelLoadError, match="has no transformer"):
        load_backend(tiny_settings(model, components={"transformer": {"path": str(model / "unet")}}))
    with pytest.raises(ModelLoadError, match="not a diffusers model directory"):
        load_backend(tiny_settings(model, components={"vae": {"path": str(model / "adapters")}}))


class _Vae(torch.nn.Module):
    def decode(self, latents: Any) -> Any:
        return latents


class _Pipe:
    def __init__(self) -> None:
        self.unet = torch.nn.Conv2d(4, 4, 1)
        self.vae = _Vae()
        self.fused = False

    def fuse_qkv_projections(self) -> None:
        self.fused = True


@pytest.mark.parametrize("adapters", [False, True])
def test_with_adapters_cuda_speed_ups_neither_fuse_nor_compile_the_unet(adapters: bool) -> None:
    from kubediffusion.inference.accel import optimize_pipeline

    pipe = _Pipe()
    applied = optimize_pipeline(pipe, device="cuda", compile=True, adapters=adapters)
    assert pipe.fused is not adapters and ("fused_qkv" in applied) is not adapters
    assert isinstance(pipe.unet, torch.nn.Conv2d) is adapters  # compiled: an OptimizedModule
    assert any(name.startswith("compile:vae.decode") for name in applied)
