"""Edits, variations and partial images on the real tiny SD and SDXL pipelines (in-process, CPU).

Image-to-image and inpainting come from ``from_pipe`` over the loaded weights (the same module objects,
no copy); edits batch like generations (inputs passed as lists) and a batched edit equals the same edit
alone; streamed requests in one batch each get their own partial images; the tiny autoencoder decodes
full-size previews when the model directory has one."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference.pipeline import load_backend
from kubediffusion.tinymodel import main as tiny_main
from tests.inference.tinyserve import serve, tiny_settings
from tests.unit.api.sample_images import form, mask_png, png

pytestmark = [pytest.mark.inference, pytest.mark.timeout(240)]
EDITS = "/v1/images/edits"


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_edit_pipelines_share_the_loaded_modules(tiny_models: dict[str, Path], kind: str) -> None:
    backend = load_backend(tiny_settings(tiny_models[kind]))
    base = backend.pipes["txt2img"]
    assert set(backend.pipes) == {"txt2img", "img2img", "inpaint"}
    assert backend.description.edit_kinds == ("img2img", "inpaint")
    for task in ("img2img", "inpaint"):
        derived = backend.pipes[task]
        assert type(derived) is not type(base)
        shared = {name: module for name, module in derived.components.items() if module is not None}
        assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(shared)
        for name, module in shared.items():
            assert module is base.components[name], f"{task}.{name} is a copy"
    unet_weights = {p.data_ptr() for p in base.unet.parameters()}
    assert unet_weights == {p.data_ptr() for p in backend.pipes["inpaint"].unet.parameters()}


def images_of(payload: dict[str, Any]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in payload["data"]]


async def post_form(client: Any, path: str, fields: dict[str, str], images: list[tuple[str, bytes]]) -> Any:
    body, content_type = form(fields, images)
    return await client.post(path, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
async def test_img2img_inpaint_and_variation_on_each_pipeline(tiny_models: dict[str, Path], kind: str) -> None:
    async with serve(tiny_settings(tiny_models[kind], warmup=False)) as (client, _):
        plain = await post_form(client, EDITS, {"prompt": "a barn", "seed": "1"}, [("image", png((64, 64)))])
        masked = await post_form(
            client, EDITS, {"prompt": "a barn", "seed": "1"}, [("image", png((64, 64))), ("mask", mask_png())]
        )
        variation = await post_form(client, "/v1/images/variations", {"size": "128x64"}, [("image", png((64, 64)))])
        streamed = await post_form(
            client, EDITS, {"prompt": "a barn", "stream": "true", "partial_images": "1"}, [("image", mask_png())]
        )
    for response, size in ((plain, (64, 64)), (masked, (64, 64)), (variation, (128, 64))):
        assert response.status_code == 200, response.text
        (image,) = images_of(response.json())
        assert image.size == size
    assert plain.json()["data"] != masked.json()["data"]  # inpainting kept the unmasked part of the input
    assert [event["type"] for event in events_of(streamed.text)] == ["image_edit.partial_image", "image_edit.completed"]


async def test_edits_are_batched_and_a_batched_edit_equals_the_same_edit_alone(tiny_models: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, batch_window_ms=300, max_batch_size=4)
    edit = ({"prompt": "a barn", "seed": "7", "strength": "0.5"}, [("image", png((64, 64)))])
    other = ({"prompt": "a house", "seed": "8", "strength": "0.5"}, [("image", png((64, 64), colour=(9, 9, 9)))])
    async with serve(settings) as (client, _):
        together = await asyncio.gather(post_form(client, EDITS, *edit), post_form(client, EDITS, *other))
        metrics = (await client.get("/metrics")).text
        alone = (await post_form(client, EDITS, *edit)).json()["data"]
    assert [response.status_code for response in together] == [200, 200]
    assert "kubediffusion_inference_batch_size_count 1.0" in metrics  # both in one pipeline call
    assert "kubediffusion_inference_batch_size_sum 2.0" in metrics
    assert together[0].json()["data"] == alone
    assert together[1].json()["data"] != alone


def events_of(text: str) -> list[dict[str, Any]]:
    return [event.json() for event in SSEDecoder().feed(text.encode())]


async def test_streamed_requests_in_one_batch_get_their_own_partial_images(tiny_models: dict[str, Path]) -> None:
    settings = tiny_settings(tiny_models["sd"], warmup=False, batch_window_ms=300, max_batch_size=4)
    request = {"prompt": "a lighthouse", "num_inference_steps": 4, "stream": True}
    async with serve(settings) as (client, _):
        responses = await asyncio.gather(
            client.post("/v1/images/generations", json={**request, "partial_images": 1, "seed": 1}),
            client.post("/v1/images/generations", json={**request, "partial_images": 3, "n": 2, "seed": 2}),
            client.post("/v1/images/generations", json={"prompt": "plain", "num_inference_steps": 4}),
        )
        metrics = (await client.get("/metrics")).text
    assert "kubediffusion_inference_batch_size_count 1.0" in metrics  # all three in one pipeline call
    one, two = events_of(responses[0].text), events_of(responses[1].text)
    assert [e["type"] for e in one] == ["image_generation.partial_image", "image_generation.completed"]
    assert [e["type"] for e in two].count("image_generation.partial_image") == 6  # 3 for each of 2 images
    assert [e["type"] for e in two][-2:] == ["image_generation.completed"] * 2
    assert responses[2].json()["data"][0]["b64_json"]


async def test_tiny_autoencoder_in_the_model_directory_decodes_full_size_previews(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "with-taesd"
    shutil.copytree(tiny_models["sd"], model)
    assert tiny_main([str(model), "--preview-decoder"]) == 0  # the CLI rewrites the model and adds taesd/
    assert (model / "taesd" / "config.json").is_file()
    async with serve(tiny_settings(model, warmup=False)) as (client, app):
        assert app.state.server.backend.description.previews == "taesd"
        response = await client.post(
            "/v1/images/generations",
            json={"prompt": "a", "stream": True, "partial_images": 1, "size": "128x64", "num_inference_steps": 2},
        )
    partial, completed = events_of(response.text)
    assert partial["type"] == "image_generation.partial_image"
    image = Image.open(io.BytesIO(base64.b64decode(partial["b64_json"])))
    assert image.size == (128, 64)
    assert completed["type"] == "image_generation.completed"
