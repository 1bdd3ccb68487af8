"""What each adapter sends its engine, built without a network: AUTOMATIC1111's txt2img/img2img bodies,
ComfyUI's workflow and placeholders, InvokeAI's graph and batch, the OpenAI-compatible bodies; and
what each refuses (a 400 naming the field) before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubediffusion.api.edits import parse_edit_request
from kubediffusion.api.errors import InvalidRequestError
from kubediffusion.api.schema import GenerationParams, ImageGenerationRequest
from kubediffusion.inference.backend import EditUpload, ImageJob, ModelLoadError
from kubediffusion.inference.engines import create_engine
from kubediffusion.inference.engines.automatic1111 import Automatic1111Engine
from kubediffusion.inference.engines.base import EngineRequest
from kubediffusion.inference.engines.comfyui import ComfyUIEngine
from kubediffusion.inference.engines.comfyui_workflow import BUILT_IN, fill, load_workflow, placeholders, refusals
from kubediffusion.inference.engines.invokeai_graph import batch, text_to_image_graph
from kubediffusion.inference.engines.openai_images import OpenAIImagesEngine
from kubediffusion.inference.settings import InferenceSettings
from tests.unit.api.sample_images import form, mask_png, png


def settings(engine: str, **values: Any) -> InferenceSettings:
    return InferenceSettings(engine=engine, engine_url="http://engine.test", **values)  # type: ignore[arg-type]


def params(**overrides: Any) -> GenerationParams:
    values: dict[str, Any] = dict(
        prompt="a cat",
        negative_prompt="dog",
        n=1,
        width=64,
        height=48,
        steps=3,
        guidance=6.5,
        seed=9,
        output_format="png",
        output_compression=100,
    )
    values.update(overrides)
    return GenerationParams(**values)


def generation(**fields: Any) -> EngineRequest:
    return EngineRequest.of_generation(ImageGenerationRequest(prompt="x", **fields))


def job(n: int = 1, seed: int = 9, **kwargs: Any) -> ImageJob:
    return ImageJob(params=params(n=n), seeds=tuple(seed + i for i in range(n)), **kwargs)


# -- AUTOMATIC1111 ------------------------------------------------------------------------------


def test_automatic1111_txt2img_maps_our_fields() -> None:
    engine = Automatic1111Engine(settings("automatic1111", engine_model="sdxl.safetensors"), None, None)
    body = engine.payload(job(n=3))
    assert {key: body[key] for key in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale")} == {
        "prompt": "a cat",
        "negative_prompt": "dog",
        "seed": 9,
        "steps": 3,
        "cfg_scale": 6.5,
    }
    assert (body["width"], body["height"], body["batch_size"], body["n_iter"]) == (64, 48, 3, 1)
    assert body["override_settings"] == {"sd_model_checkpoint": "sdxl.safetensors"}
    assert "init_images" not in body and "sampler_name" not in body


def test_automatic1111_batch_size_stays_within_engine_max_n() -> None:
    engine = Automatic1111Engine(settings("automatic1111", engine_max_n=2, engine_sampler="Euler a"), None, None)
    body = engine.payload(job(n=3))
    assert (body["batch_size"], body["n_iter"], body["sampler_name"]) == (2, 2, "Euler a")  # 4 made, 3 kept


def test_automatic1111_edits_send_the_upload_and_the_inverted_mask() -> None:
    request = parse_edit_request(*form({"prompt": "p"}, [("image", png((64, 48))), ("mask", mask_png((64, 48)))]))
    upload = EditUpload(image=request.images[0], mask=request.mask, strength=0.4)
    body = Automatic1111Engine(settings("automatic1111"), None, None).payload(job(upload=upload))
    assert body["denoising_strength"] == 0.4 and body["inpainting_mask_invert"] == 1
    assert len(body["init_images"]) == 1 and body["mask"]


def test_automatic1111_refuses_transparency_without_a_mask_and_other_formats() -> None:
    engine = Automatic1111Engine(settings("automatic1111"), None, None)
    request = parse_edit_request(*form({"prompt": "p"}, [("image", png((64, 48), mode="RGBA", hole=(0, 0, 4, 4)))]))
    with pytest.raises(InvalidRequestError) as caught:
        engine.check(EngineRequest.of_edit(request))
    assert caught.value.param == "mask"
    with pytest.raises(InvalidRequestError) as caught:
        engine.check(generation(output_format="jpeg"))
    assert caught.value.param == "output_format"
    engine.check(generation(negative_prompt="x", seed=1, num_inference_steps=2, stream=True))


def test_automatic1111_credential_must_be_user_and_password() -> None:
    with pytest.raises(ModelLoadError, match="user:password"):
        Automatic1111Engine(settings("automatic1111"), "just-a-token", None)


# -- ComfyUI --------------------------------------------------------------------------------------


def test_the_built_in_workflow_has_every_placeholder_and_fills_typed_values() -> None:
    assert placeholders(BUILT_IN) == {
        "prompt",
        "negative_prompt",
        "seed",
        "steps",
        "guidance",
        "width",
        "height",
        "batch_size",
        "model",
        "sampler",
    }
    engine = ComfyUIEngine(settings("comfyui", engine_model="sd15.safetensors"), None, None)
    ((count, workflow),) = engine.prompts(job(n=3))
    assert count == 3 and placeholders(workflow) == set()
    sampler = workflow["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (9, 3, 6.5, "euler")
    assert workflow["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 3}
    assert workflow["4"]["inputs"]["ckpt_name"] == "sd15.safetensors"
    assert BUILT_IN["3"]["inputs"]["seed"] == "{{seed}}"  # the template itself is untouched


def test_placeholders_inside_text_are_replaced_as_text() -> None:
    filled = fill(
        {"1": {"class_type": "X", "inputs": {"text": "a photo of {{prompt}}, {{steps}} steps"}}},
        {"prompt": "a cat", "steps": 4},
    )
    assert filled["1"]["inputs"]["text"] == "a photo of a cat, 4 steps"


def test_a_workflow_without_placeholders_refuses_those_fields_and_makes_one_prompt_per_image(tmp_path: Path) -> None:
    path = tmp_path / "workflow.json"
    workflow = {"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "text": "{{prompt}}"}}}
    path.write_text(json.dumps(workflow))
    assert refusals(load_workflow(path)) == {
        "negative_prompt": "the ComfyUI workflow has no {{negative_prompt}} placeholder",
        "num_inference_steps": "the ComfyUI workflow has no {{steps}} placeholder",
        "guidance_scale": "the ComfyUI workflow has no {{guidance}} placeholder",
        "size": "the ComfyUI workflow has no {{width}} placeholder",
    }
    engine = ComfyUIEngine(settings("comfyui", engine_workflow=path), None, None)
    assert [(count, filled["1"]["inputs"]["seed"]) for count, filled in engine.prompts(job(n=2))] == [(1, 9), (1, 10)]
    with pytest.raises(InvalidRequestError) as caught:
        engine.check(generation(size="64x64"))
    assert caught.value.param == "size"
    engine.check(generation(seed=3, negative_prompt=""))  # an empty negative prompt asks for nothing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        ('{"1": {"inputs": {}}}', "no class_type"),
        ('{"1": {"class_type": "X", "inputs": {"t": "{{prompt}} {{colour}}"}}}', "unknown placeholders"),
        ('{"1": {"class_type": "X", "inputs": {"t": "fixed"}}}', "no {{prompt}}"),
    ],
)
def test_a_bad_workflow_file_stops_the_server_with_a_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(content)
    with pytest.raises(ModelLoadError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_workflow(path)


def test_comfyui_needs_a_checkpoint_for_the_built_in_workflow() -> None:
    with pytest.raises(ModelLoadError, match="engine_model"):
        create_engine(settings("comfyui"))


# -- InvokeAI -------------------------------------------------------------------------------------

SD = {"key": "k1", "hash": "blake3:1", "name": "sd15", "base": "sd-1", "type": "main", "format": "diffusers"}
SDXL = {**SD, "key": "k2", "base": "sdxl"}


@pytest.mark.parametrize("record", [SD, SDXL])
def test_the_invokeai_graph_connects_existing_nodes(record: dict[str, Any]) -> None:
    graph = text_to_image_graph(record, params(), "euler")
    nodes = graph["nodes"]
    assert all(node["id"] == node_id for node_id, node in nodes.items())
    for edge in graph["edges"]:
        assert edge["source"]["node_id"] in nodes and edge["destination"]["node_id"] in nodes
    assert nodes["kd_model"]["model"] == {key: record[key] for key in ("key", "hash", "name", "base", "type")}
    assert nodes["kd_model"]["type"] == ("sdxl_model_loader" if record is SDXL else "main_model_loader")
    assert nodes["kd_positive"]["type"] == ("sdxl_compel_prompt" if record is SDXL else "compel")
    assert (nodes["kd_noise"]["width"], nodes["kd_noise"]["height"]) == (64, 48)
    assert nodes["kd_l2i"]["is_intermediate"] is False and nodes["kd_denoise"]["is_intermediate"] is True


def test_the_invokeai_batch_zips_one_seed_per_image() -> None:
    body = batch(SD, params(n=3), (5, 6, 7), "euler")
    assert body["prepend"] is False and body["batch"]["runs"] == 1
    assert body["batch"]["data"] == [[{"node_path": "kd_noise", "field_name": "seed", "items": [5, 6, 7]}]]


def test_invokeai_needs_a_model_key() -> None:
    with pytest.raises(ModelLoadError, match="model key"):
        create_engine(settings("invokeai"))


# -- OpenAI-compatible ----------------------------------------------------------------------------


def test_openai_bodies_split_n_and_forward_what_the_client_set() -> None:
    engine = OpenAIImagesEngine(settings("openai", engine_model="dall-e-3", engine_max_n=1), "k", None)
    bodies = engine.payloads(job(n=2, passthrough=(("quality", "hd"), ("style", "vivid"), ("seed", 9))))
    assert bodies == [
        {"prompt": "a cat", "n": 1, "size": "64x48", "model": "dall-e-3", "quality": "hd", "style": "vivid"},
        {"prompt": "a cat", "n": 1, "size": "64x48", "model": "dall-e-3", "quality": "hd", "style": "vivid"},
    ]


def test_openai_refuses_our_extensions_unless_told_to_forward_them() -> None:
    strict = OpenAIImagesEngine(settings("openai"), None, None)
    for field, value in (("negative_prompt", "x"), ("num_inference_steps", 2), ("guidance_scale", 1.0), ("seed", 1)):
        with pytest.raises(InvalidRequestError) as caught:
            strict.check(generation(**{field: value}))
        assert (caught.value.param, caught.value.code) == (field, "unsupported_parameter")
    strict.check(generation(negative_prompt="", quality="high", output_format="webp"))
    forwarding = OpenAIImagesEngine(settings("openai", engine_forward_extensions=True), None, None)
    forwarding.check(generation(seed=1, negative_prompt="x"))
    (body,) = forwarding.payloads(job(n=1, seed=4, passthrough=(("seed", 4), ("negative_prompt", "x"))))
    assert (body["seed"], body["negative_prompt"]) == (4, "x")


def test_openai_sizes_are_the_upstreams() -> None:
    engine = OpenAIImagesEngine(settings("openai", engine_sizes=["1024x1024", "1792x1024"]), None, None)
    with pytest.raises(InvalidRequestError) as caught:
        engine.check(generation(size="512x512"))
    assert caught.value.param == "size" and "1792x1024" in caught.value.message
    engine.check(generation(size="1792x1024"))
    with pytest.raises(ModelLoadError, match="default size"):
        OpenAIImagesEngine(settings("openai", engine_sizes=["1792x1024"]), None, None)
