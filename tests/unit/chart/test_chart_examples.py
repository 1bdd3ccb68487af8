"""examples/*.yaml are valid ImageModels: the CRD's OpenAPI schema accepts them, the operator's typed
spec parses them, and the hardware profiles they name exist in the chart's default values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubediffusion.imagemodel.spec import ImageModelSpec
from tests.unit.chart.helm_cli import CHART_DIR, CRD_SOURCE, EXAMPLES_DIR, Helm, container_env, one

EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.yaml") if "kind: ImageModel" in p.read_text())


def _openapi_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_examples_cover_sdxl_turbo_sdxl_base_sd15_an_elastic_model_and_a_cpu_tiny_model() -> None:
    assert {p.stem for p in EXAMPLES} == {"sdxl-turbo", "sdxl-base", "sd15", "tiny-cpu", "sdxl-turbo-elastic"}


def test_the_elastic_example_scales_to_zero_on_a_shareable_cache_with_room_for_a_swap() -> None:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "sdxl-turbo-elastic.yaml").read_text()))
    assert spec.autoscaling is not None and spec.autoscaling.min_replicas == 0 and spec.replicas is None
    assert spec.cache.access_mode == "ReadWriteMany" and spec.cache.swap == "sideBySide"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_valid_image_model(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
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
