"""spec.engine in the typed spec: the CRD's engine rules said again for readers without an API server, what
each engine needs and refuses, and the names kept equal to the model server's and the CRD's.

The same case table (tests/support/engine_specs.py) runs against the real API server's CEL rules in
tests/cluster/test_crd_imagemodel.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from kubediffusion.imagemodel import engine as engine_module
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError
from kubediffusion.inference import settings as inference_settings
from tests.support.engine_specs import INVALID, VALID

CRD = yaml.safe_load((Path(__file__).resolve().parents[3] / "crds" / "imagemodel.yaml").read_text())
ENGINE_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["engine"]


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": spec})


def test_engine_names_are_the_model_servers_and_the_crds() -> None:
    # imagemodel may not import the inference server (import layers): the names are written twice.
    assert get_args(engine_module.EngineName) == get_args(inference_settings.EngineName)
    assert engine_module.ADAPTERS == inference_settings.ADAPTERS
    assert ENGINE_SCHEMA["properties"]["name"]["enum"] == list(get_args(engine_module.EngineName))


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_engine_specs_parse(case: str) -> None:
    spec = parse(VALID[case])
    assert spec.needs_weights is (spec.engine.name == "diffusers")
    if not spec.needs_weights:
        assert spec.source.kind == "none" and not spec.source.needs_fetch and not spec.per_node_cache


@pytest.mark.parametrize(("case", "spec", "field", "api"), INVALID, ids=[c.case for c in INVALID])
def test_an_unservable_engine_spec_names_the_field(case: str, spec: dict[str, Any], field: str, api: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse(spec)
    assert info.value.field.startswith(field), f"{case}: {info.value}"


def test_a_model_without_an_engine_is_the_diffusers_model_it_always_was() -> None:
    spec = parse({"source": {"tiny": {}}})
    assert spec.engine.name == "diffusers" and spec.needs_weights and spec.engine.upstream_url is None
    assert spec.describe() == "tiny:sd (smoke test)"


def test_the_stub_is_a_smoke_test_with_the_usual_defaults() -> None:
    spec = parse({"engine": {"name": "stub"}})
    assert spec.is_smoke_test and spec.describe() == "stub (smoke test)"
    assert spec.effective_defaults.size == "1024x1024", "the tiny model's 64x64 is the tiny source's, not the stub's"
    assert not parse({"engine": {"name": "automatic1111", "url": "http://w:7860"}}).is_smoke_test


@pytest.mark.parametrize(
    ("engine", "url"),
    [
        ({"name": "automatic1111", "image": "a/w:1"}, "http://127.0.0.1:7860"),
        ({"name": "comfyui", "image": "a/c:1", "model": "m"}, "http://127.0.0.1:8188"),
        ({"name": "invokeai", "image": "a/i:1", "model": "k"}, "http://127.0.0.1:9090"),
        ({"name": "comfyui", "image": "a/c:1", "model": "m", "port": 9000}, "http://127.0.0.1:9000"),
        ({"name": "openai", "image": "vllm/vllm:1", "port": 8001}, "http://127.0.0.1:8001/v1"),
        ({"name": "openai", "url": "https://api.openai.com/v1"}, "https://api.openai.com/v1"),
    ],
)
def test_a_sidecar_is_called_on_the_pods_loopback_at_its_engines_usual_port(engine: dict[str, Any], url: str) -> None:
    assert parse({"engine": engine}).engine.upstream_url == url


def test_the_source_column_says_which_engine_and_where_without_credentials() -> None:
    at_url = parse({"engine": {"name": "automatic1111", "url": "http://webui.tools.svc:7860/sd?token=secret"}})
    assert at_url.describe() == "automatic1111: http://webui.tools.svc:7860/sd"
    sidecar = parse({"engine": {"name": "comfyui", "image": "ghcr.io/acme/comfyui:1", "model": "m"}})
    assert sidecar.describe() == "comfyui: sidecar ghcr.io/acme/comfyui:1"
    long = parse({"engine": {"name": "openai", "url": "https://api.example/" + "v/" * 40 + "v1"}}).describe()
    assert len(long) == 60 and long.endswith("...")


def test_an_openai_upstreams_sizes_must_hold_the_default_size() -> None:
    # The CRD cannot see the effective default size (it may be the built-in 1024x1024): the typed spec does.
    upstream = {"name": "openai", "url": "https://api.openai.com/v1", "sizes": ["1792x1024"]}
    with pytest.raises(InvalidSpecError) as info:
        parse({"engine": upstream})
    assert info.value.field == "engine.sizes" and "1024x1024" in str(info.value)
    assert parse({"engine": upstream, "defaults": {"size": "1792x1024"}, "limits": {"maxSize": 1792}})


def test_an_empty_source_is_still_refused_for_diffusers() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse({"source": {}})
    assert info.value.field == "source" and "exactly one" in str(info.value)
