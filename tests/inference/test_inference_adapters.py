"""LoRA adapters on the real tiny SD pipeline (diffusers' PEFT integration): loaded once, switched per
batch, each adapter its own images, the base model untouched, a scale of 0 the base model exactly, and
a batch mixing adapter sets split into one pipeline call per set."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from PIL import Image, ImageChops

from kubediffusion.api.pipelines import PipelineChoice
from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ImageBackend, ImageJob, ModelLoadError, StepCallback
from kubediffusion.inference.pipeline import DiffusersBackend, load_backend
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import TINY_UNET_FILE, write_tiny_lora
from kubediffusion.tinymodel import main as tiny_main
from tests.inference.tinyserve import serve, tiny_settings
from tests.unit.api.sample_images import form, png

pytestmark = [pytest.mark.inference, pytest.mark.timeout(300)]
GENERATE = "/v1/images/generations"


def with_adapters(model: Path, **overrides: Any) -> InferenceSettings:
    adapters = [
        {"name": "style-a", "path": str(model / "adapters" / "style-a")},
        {"name": "style-b", "path": str(model / "adapters" / "style-b" / "pytorch_lora_weights.safetensors")},
    ]
    return tiny_settings(model, adapters=adapters, **overrides)


async def images(client: Any, **request: Any) -> list[str]:
    response = await client.post(GENERATE, json={"prompt": "a red fox", "seed": 11, **request})
    assert response.status_code == 200, response.text
    return [item["b64_json"] for item in response.json()["data"]]


async def test_two_adapters_give_different_images_and_the_base_model_is_unchanged(tiny_extras: dict[str, Path]) -> None:
    async with serve(with_adapters(tiny_extras["sd"])) as (client, app):
        base = await images(client)
        style_a = await images(client, model="tiny:style-a")
        style_b = await images(client, adapters=[{"name": "style-b"}])
        both = await images(client, adapters=[{"name": "style-a"}, {"name": "style-b", "scale": -1}])
        base_again = await images(client)
        style_a_by_field = await images(client, adapters=[{"name": "style-a", "scale": 1.0}])
        switch = app.state.server.backend.adapters
        assert switch.names == ("style-a", "style-b")
        # Switched, never reloaded: at load (base), then a, b, a+b, base, a (the warm-up ran on the base).
        assert switch.switches == 6
    assert len({*base, *style_a, *style_b, *both}) == 4
    assert base_again == base  # switching back is the base model, byte for byte
    assert style_a_by_field == style_a


async def test_the_base_model_without_adapters_settings_makes_the_same_image(
    tiny_extras: dict[str, Path],
) -> None:
    async with serve(tiny_settings(tiny_extras["sd"], warmup=False)) as (client, _):
        plain = await images(client)
    async with serve(with_adapters(tiny_extras["sd"], warmup=False)) as (client, _):
        loaded = await images(client)
    assert plain == loaded  # loading adapters leaves the base weights as they were


async def test_scale_zero_is_the_base_image_exactly(tiny_extras: dict[str, Path]) -> None:
    """Through the API a zero scale leaves the adapter out (it shares the base model's batches); in the
    pipeline a weight of 0 multiplies the LoRA branch by 0 and adds exactly 0.0 to each base layer's
    output, so the images are byte-equal there too, not merely close."""
    async with serve(with_adapters(tiny_extras["sd"])) as (client, app):
        base = await images(client)
        zero = await images(client, adapters=[{"name": "style-a", "scale": 0}])
        backend: DiffusersBackend = app.state.server.backend
        job = ImageJob(params=_params(PipelineChoice((("style-a", 0.0), ("style-b", 0.0)))), seeds=(11,))
        direct_zero = await app.state.server.batcher.run_exclusive(lambda: backend.generate([job]))
        job_base = dataclasses.replace(job, params=_params(PipelineChoice()))
        direct_base = await app.state.server.batcher.run_exclusive(lambda: backend.generate([job_base]))
        assert backend.adapters.active == ()
    assert zero == base
    assert direct_zero[0][0].tobytes() == direct_base[0][0].tobytes()


def largest_difference(first: str, second: str) -> int:
    a, b = (Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB") for item in (first, second))
    return max(high for _, high in ImageChops.difference(a, b).getextrema())


def _params(choice: PipelineChoice) -> GenerationParams:
    return GenerationParams("a red fox", "", 1, 64, 64, 2, 5.0, 11, "png", 100, pipeline=choice)


class CallSpy:
    """The real backend, recording each pipeline call's adapter sets."""

    def __init__(self, inner: ImageBackend) -> None:
        self.inner = inner
        self.calls: list[list[tuple[tuple[str, float], ...]]] = []

    @property
    def description(self) -> Any:
        return self.inner.description

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        self.calls.append([job.params.pipeline.adapters for job in jobs])
        return self.inner.generate(jobs, on_step)

    def vram(self) -> tuple[int, int] | None:
        return self.inner.vram()

    def close(self) -> None:
        self.inner.close()


async def test_a_batch_mixing_two_adapter_sets_is_split_one_call_per_set(tiny_extras: dict[str, Path]) -> None:
    settings = with_adapters(tiny_extras["sd"], warmup=False, batch_window_ms=400, max_batch_size=4)
    spies: list[CallSpy] = []

    def loader(settings: InferenceSettings) -> CallSpy:
        spies.append(CallSpy(load_backend(settings)))
        return spies[0]

    requests = [
        {"model": "tiny:style-a", "seed": 1},
        {"model": "tiny:style-b", "seed": 2},
        {"model": "tiny:style-a", "seed": 3},
        {"model": "tiny:style-b", "seed": 4},
    ]
    swap = {"tiny:style-a": "tiny:style-b", "tiny:style-b": "tiny:style-a"}
    async with serve(settings, loader) as (client, _):
        together = await asyncio.gather(*(images(client, **request) for request in requests))
        metrics = (await client.get("/metrics")).text
        alone = [await images(client, **request) for request in requests]
        swapped = [await images(client, **{**request, "model": swap[request["model"]]}) for request in requests]
    assert spies[0].calls[:2] == [[(("style-a", 1.0),)] * 2, [(("style-b", 1.0),)] * 2]
    assert "kubediffusion_inference_batch_size_count 2.0" in metrics
    assert "kubediffusion_inference_batch_size_sum 4.0" in metrics
    # Each image had its own adapter whatever shared its batch: it is its request alone (up to one level
    # of rounding, CPU kernels differ slightly by batch size), and far from the other adapter's image.
    for batched, own, other in zip(together, alone, swapped, strict=True):
        assert largest_difference(batched[0], own[0]) <= 2 < largest_difference(batched[0], other[0])


def test_adapters_that_do_not_fit_or_are_missing_fail_the_load_clearly(
    tiny_extras: dict[str, Path], tmp_path: Path
) -> None:
    sd = tiny_extras["sd"]
    with pytest.raises(ModelLoadError, match=r"style-c: .* does not exist"):
        load_backend(tiny_settings(sd, adapters=[{"name": "style-c", "path": str(sd / "missing")}]))
    with pytest.raises(ModelLoadError, match="Invalid LoRA checkpoint"):  # a VAE is no LoRA
        load_backend(tiny_settings(sd, adapters=[{"name": "c", "path": str(sd / "components" / "vae")}]))
    for name in ("one.safetensors", "two.safetensors"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"cannot tell which \.safetensors file .*one\.safetensors, two"):
        load_backend(tiny_settings(sd, adapters=[{"name": "c", "path": str(tmp_path)}]))


def test_tiny_model_cli_writes_the_extras_in_the_cache_layout(tiny_extras: dict[str, Path], tmp_path: Path) -> None:
    sd = tiny_extras["sd"]
    for part in (
        "adapters/style-a/pytorch_lora_weights.safetensors",
        "adapters/style-b/pytorch_lora_weights.safetensors",
        "components/vae/config.json",
        f"components/unet/{TINY_UNET_FILE}",
    ):
        assert (sd / part).is_file(), part
    assert (sd / "adapters/style-a/pytorch_lora_weights.safetensors").read_bytes() != (
        sd / "adapters/style-b/pytorch_lora_weights.safetensors"
    ).read_bytes()
    index = json.loads((tiny_extras["checked"] / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert (tiny_extras["checked"] / "safety_checker" / "preprocessor_config.json").is_file()
    with pytest.raises(SystemExit):
        tiny_main([str(tmp_path / "xl"), "--kind", "sdxl", "--safety-checker"])


async def test_an_sdxl_lora_with_both_text_encoders_loads_and_changes_the_image(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    adapter = write_tiny_lora(tmp_path, "xl-style", "sdxl")
    settings = tiny_settings(tiny_models["sdxl"], warmup=False, adapters=[{"name": "xl-style", "path": str(adapter)}])
    async with serve(settings) as (client, app):
        base, styled = await images(client), await images(client, model="tiny:xl-style")
        listed = app.state.server.backend.pipe.get_list_adapters()
    assert base != styled
    assert listed == {"unet": ["xl-style"], "text_encoder": ["xl-style"], "text_encoder_2": ["xl-style"]}


async def test_edits_take_adapters_and_a_scheduler_through_the_shared_modules(tiny_extras: dict[str, Path]) -> None:
    settings = with_adapters(tiny_extras["sd"], scheduler={"allowed": ["DDIMScheduler"]})

    async def edit(client: Any, **fields: str) -> str:
        # 4 steps at strength 0.75 run 3: with only the last one, Euler and DDIM give the same x0.
        body, content_type = form(
            {"prompt": "a barn", "seed": "3", "num_inference_steps": "4", **fields}, [("image", png((64, 64)))]
        )
        response = await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
        assert response.status_code == 200, response.text
        b64: str = response.json()["data"][0]["b64_json"]
        return b64

    async with serve(settings) as (client, _):
        base = await edit(client)
        by_name = await edit(client, model="tiny:style-a")
        by_field = await edit(client, adapters='[{"name": "style-a"}]')
        ddim = await edit(client, scheduler="DDIMScheduler")
        base_again = await edit(client)
    assert by_name == by_field != base
    assert ddim != base and base_again == base
