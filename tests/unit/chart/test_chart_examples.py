"""examples/*.yaml are valid ImageModels: the CRD's OpenAPI schema accepts them, the operator's typed
spec parses them, and the hardware profiles they name exist in the chart's default values. The engine
examples serve through the model server's own settings (a ComfyUI workflow loads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubediffusion.imagemodel.names import Owner
from kubediffusion.imagemodel.spec import HardwareProfile, ImageModelSpec, resolve_resources
from kubediffusion.inference.engines.comfyui_workflow import load_workflow
from kubediffusion.operator.engine_pod import WORKFLOW_FILE
from kubediffusion.operator.parts import Context
from kubediffusion.operator.resources import build_deployment
from tests.support.examples import companions, image_model, image_model_examples
from tests.unit.chart.helm_cli import CHART_DIR, CRD_SOURCE, EXAMPLES_DIR, Helm, container_env, one

EXAMPLES = image_model_examples()
ENGINE_EXAMPLES = {"invokeai", "comfyui", "automatic1111", "stub"}


def _openapi_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_examples_cover_the_diffusers_models_an_elastic_one_a_cpu_tiny_one_and_each_engine() -> None:
    diffusers = {"sdxl-turbo", "sdxl-base", "sdxl-lightning", "sd15", "tiny-cpu", "sdxl-turbo-elastic"}
    assert {p.stem for p in EXAMPLES} == diffusers | ENGINE_EXAMPLES


def test_the_lightning_example_has_its_unet_trailing_euler_and_four_steps_without_guidance() -> None:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "sdxl-lightning.yaml").read_text()))
    assert spec.components is not None and spec.components.unet is not None
    assert spec.components.unet.file == "sdxl_lightning_4step_unet.safetensors"
    assert spec.scheduler is not None and spec.scheduler.name == "EulerDiscreteScheduler"
    assert spec.scheduler.config == {"timestep_spacing": "trailing"}
    defaults = spec.effective_defaults
    assert (defaults.steps, defaults.guidance, defaults.size) == (4, 0.0, "1024x1024")


def test_the_elastic_example_scales_to_zero_on_a_shareable_cache_with_room_for_a_swap() -> None:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "sdxl-turbo-elastic.yaml").read_text()))
    assert spec.autoscaling is not None and spec.autoscaling.min_replicas == 0 and spec.replicas is None
    assert spec.cache.access_mode == "ReadWriteMany" and spec.cache.swap == "sideBySide"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_valid_image_model(path: Path) -> None:
    body = image_model(path)
    assert body["apiVersion"] == "kubediffusion.io/v1alpha1" and body["kind"] == "ImageModel"
    assert body["metadata"]["name"] == path.stem
    assert "namespace" not in body["metadata"]  # applied with -n
    jsonschema.validate(body, _openapi_schema())
    spec = ImageModelSpec.from_body(body)
    profiles = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["operator"]["profiles"]
    if spec.resources.profile:
        assert spec.resources.profile in profiles


def test_tiny_example_runs_on_cpu_without_a_download() -> None:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text()))
    assert spec.source.tiny is not None and spec.is_smoke_test
    assert spec.resources.gpus == 0


def test_kind_values_use_the_locally_built_images(helm: Helm) -> None:
    docs = helm.template(yaml.safe_load((EXAMPLES_DIR / "values-kind.yaml").read_text()))
    for component in ("operator", "router"):
        pod = one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "kubediffusion:dev"
    env = container_env(one(docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    assert env["KD_OPERATOR_INFERENCE_IMAGE"] == "kubediffusion-inference:dev"
    assert env["KD_OPERATOR_ADAPTER_IMAGE"] == "kubediffusion:dev"  # the stub and adapters: the torch-free image


def _pod(stem: str) -> tuple[ImageModelSpec, dict[str, Any]]:
    spec = ImageModelSpec.from_body(image_model(EXAMPLES_DIR / f"{stem}.yaml"))
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    profiles = {name: HardwareProfile.model_validate(raw) for name, raw in values["operator"]["profiles"].items()}
    hardware = resolve_resources(spec.resources, profiles)
    ctx = Context(owner=Owner(stem, "models", "uid"), image="adapter:1", hardware=hardware)
    pod: dict[str, Any] = build_deployment(spec, ctx, replicas=1)["spec"]["template"]["spec"]
    return spec, pod


@pytest.mark.parametrize("stem", sorted(ENGINE_EXAMPLES))
def test_engine_examples_need_no_weights_and_their_server_settings_parse(
    stem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubediffusion.inference.settings import InferenceSettings

    spec, pod = _pod(stem)
    assert spec.engine.name == stem and not spec.needs_weights
    server = pod["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    if stem == "comfyui":  # a file the pod mounts (its content is checked below): not read here
        assert env.pop("KD_INFERENCE_ENGINE_WORKFLOW") == WORKFLOW_FILE
    fields = {f"KD_INFERENCE_{name.upper()}" for name in InferenceSettings.model_fields}
    assert set(env) - {"HOME"} <= fields, "every variable is one of the server's settings"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = InferenceSettings()
    assert settings.engine == stem and settings.model_name == stem
    assert "nvidia.com/gpu" not in json.dumps(server["resources"]), "our server needs no GPU"


def test_the_comfyui_example_carries_a_workflow_the_engine_loads(tmp_path: Path) -> None:
    path = EXAMPLES_DIR / "comfyui.yaml"
    spec = ImageModelSpec.from_body(image_model(path))
    ref = spec.engine.workflow_config_map_ref
    [config_map] = companions(path)
    assert ref is not None and config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == ref.name
    workflow = tmp_path / "workflow.json"
    workflow.write_text(config_map["data"][ref.key])
    loaded = load_workflow(workflow)
    assert "ckpt_name" in json.dumps(loaded) and spec.engine.model is None, "the checkpoint is in the workflow"
    _, pod = _pod("comfyui")
    [sidecar] = pod["initContainers"]
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "1", "the engine gets the profile's GPU"


def test_the_stub_example_is_a_smoke_test_without_gpu_volume_or_download() -> None:
    spec, pod = _pod("stub")
    assert spec.is_smoke_test and spec.describe() == "stub (smoke test)"
    assert [v["name"] for v in pod["volumes"]] == ["tmp"] and "initContainers" not in pod
