"""The API server refuses invalid spec.adapters / scheduler / components / safety (OpenAPI + CEL) naming
the field, with the rules of the model server (docs/pipelines.md); a full pipeline spec is accepted."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import raw

pytestmark = pytest.mark.cluster

VALID: dict[str, Any] = {
    "apiVersion": "kubediffusion.io/v1alpha1",
    "kind": "ImageModel",
    "metadata": {"name": "m"},
    "spec": {"source": {"huggingface": {"repo": "stabilityai/stable-diffusion-xl-base-1.0"}}},
}
URL = {"url": "https://example.com/lora.tar.gz"}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    doc["spec"].update(changes)
    return doc


def adapter(**fields: Any) -> dict[str, Any]:
    return {"name": "style-a", "source": URL, **fields}


def create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return raw(api, "POST", f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels", doc, dryRun="All")


STUB = {"engine": {"name": "stub"}}
INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "model url a safetensors file",
        with_spec(source={"url": "https://h/model.safetensors"}),
        "spec.source.url",
    ),
    ("adapter name with a dot", with_spec(adapters=[adapter(name="a.b")]), "spec.adapters[0].name"),
    ("adapter name with a colon", with_spec(adapters=[adapter(name="a:b")]), "spec.adapters[0].name"),
    ("adapter name upper case", with_spec(adapters=[adapter(name="Style")]), "spec.adapters[0].name"),
    ("adapter named twice", with_spec(adapters=[adapter(), adapter()]), "spec.adapters[1]"),
    ("adapter without source", with_spec(adapters=[{"name": "a"}]), "spec.adapters[0].source"),
    ("adapter with no source kind", with_spec(adapters=[adapter(source={})]), "spec.adapters[0].source"),
    (
        "adapter with two source kinds",
        with_spec(adapters=[adapter(source={**URL, "pvc": {"claimName": "c"}})]),
        "spec.adapters[0].source",
    ),
    ("adapter scale above 2", with_spec(adapters=[adapter(defaultScale=2.5)]), "spec.adapters[0].defaultScale"),
    ("adapter scale below -2", with_spec(adapters=[adapter(defaultScale=-3)]), "spec.adapters[0].defaultScale"),
    ("adapter pickle file", with_spec(adapters=[adapter(file="lora.bin")]), "spec.adapters[0].file"),
    ("adapter file escapes", with_spec(adapters=[adapter(file="../x.safetensors")]), "spec.adapters[0].file"),
    ("adapter absolute file", with_spec(adapters=[adapter(file="/x.safetensors")]), "spec.adapters[0].file"),
    (
        "adapter url not an archive",
        with_spec(adapters=[adapter(source={"url": "https://h/lora.bin"})]),
        "spec.adapters[0].source.url",
    ),
    (
        "adapter pvc path escapes",
        with_spec(adapters=[adapter(source={"pvc": {"claimName": "c", "path": "../x"}})]),
        "spec.adapters[0].source.pvc.path",
    ),
    ("65 adapters", with_spec(adapters=[adapter(name=f"a{i}") for i in range(65)]), "spec.adapters"),
    ("scheduler name not an identifier", with_spec(scheduler={"name": "Euler Discrete"}), "spec.scheduler.name"),
    ("scheduler allowed not an identifier", with_spec(scheduler={"allowed": ["1x"]}), "spec.scheduler.allowed[0]"),
    (
        "component without source",
        with_spec(components={"unet": {"file": "u.safetensors"}}),
        "spec.components.unet.source",
    ),
    (
        "component pickle",
        with_spec(components={"unet": {"source": URL, "file": "u.ckpt"}}),
        "spec.components.unet.file",
    ),
    ("safety action", with_spec(safety={"action": "black"}), "spec.safety.action"),
    ("safety checker path", with_spec(safety={"checker": "/models/checker"}), "spec.safety.checker"),
    ("safety checker word", with_spec(safety={"checker": "strict"}), "spec.safety.checker"),
    ("safety empty term", with_spec(safety={"blockedTerms": [""]}), "spec.safety.blockedTerms[0]"),
    (
        "pvc model with a downloaded adapter",
        with_spec(source={"pvc": {"claimName": "w"}}, adapters=[adapter()]),
        "spec.source.pvc",
    ),
    (
        "pvc model with a checker repo",
        with_spec(source={"pvc": {"claimName": "w"}}, safety={"checker": "CompVis/stable-diffusion-safety-checker"}),
        "spec.source.pvc",
    ),
    ("engine with adapters", {**VALID, "spec": {**STUB, "adapters": [adapter()]}}, "spec.engine.name"),
    (
        "engine with a scheduler",
        {**VALID, "spec": {**STUB, "scheduler": {"name": "DDIMScheduler"}}},
        "spec.engine.name",
    ),
    ("engine with a checker", {**VALID, "spec": {**STUB, "safety": {"checker": "pipeline"}}}, "spec.safety.checker"),
]


@pytest.mark.parametrize(("case", "doc", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_pipeline_is_rejected_naming_the_field(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str, case: str, doc: dict[str, Any], field: str
) -> None:
    status, answer = create(api_client, namespace, doc)
    assert status == 422, f"{case}: expected 422, got {status} {answer}"
    assert field in answer["message"], f"{case}: {field!r} not in {answer['message']!r}"


def test_a_full_pipeline_and_an_engines_blocked_terms_are_accepted(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str
) -> None:
    full = with_spec(
        adapters=[
            adapter(defaultScale=-0.5, file="dir/style.safetensors"),
            {"name": "one-file", "source": {"url": "https://huggingface.co/o/r/resolve/main/lora.safetensors"}},
            {"name": "pixel_art", "source": {"huggingface": {"repo": "nerijs/pixel-art-xl", "revision": "v1"}}},
            {"name": "house", "source": {"pvc": {"claimName": "loras", "path": "house"}}},
        ],
        scheduler={"name": "EulerDiscreteScheduler", "config": {"timestep_spacing": "trailing", "steps_offset": 1}},
        components={
            "unet": {"source": {"huggingface": {"repo": "ByteDance/SDXL-Lightning"}}, "file": "u.safetensors"},
            "vae": {"source": {"huggingface": {"repo": "madebyollin/sdxl-vae-fp16-fix"}}},
        },
        safety={
            "checker": "CompVis/stable-diffusion-safety-checker",
            "action": "blur",
            "blockedTerms": ["gore", "nud*"],
            "allowLowModeration": True,
        },
    )
    status, answer = create(api_client, namespace, full)
    assert status == 201, answer
    assert answer["spec"]["scheduler"]["config"] == {"timestep_spacing": "trailing", "steps_offset": 1}, "kept whole"
    mounted = with_spec(
        source={"pvc": {"claimName": "w"}},
        adapters=[adapter(source={"pvc": {"claimName": "loras", "path": "a"}})],
        components={"vae": {"source": {"pvc": {"claimName": "vaes"}}}},
        safety={"checker": "pipeline"},
    )
    status, answer = create(api_client, namespace, mounted)
    assert status == 201, answer
    engine = {**VALID, "spec": {**STUB, "safety": {"blockedTerms": ["gore"], "checker": "none"}}}
    status, answer = create(api_client, namespace, engine)
    assert status == 201, answer


def test_an_unknown_component_is_refused_by_strict_validation_and_pruned_otherwise(
    api_client: client.ApiClient, namespace: str, imagemodel_crd: str
) -> None:
    # Unknown fields are pruned by a structural schema before CEL sees them; kubectl apply asks for Strict.
    doc = with_spec(components={"text_encoder": {"source": URL}})
    path = f"/apis/kubediffusion.io/v1alpha1/namespaces/{namespace}/imagemodels"
    status, answer = raw(api_client, "POST", path, doc, dryRun="All", fieldValidation="Strict")
    assert status == 400 and "spec.components.text_encoder" in answer["message"], answer
    status, answer = create(api_client, namespace, doc)
    assert status == 201 and answer["spec"]["components"] == {}, "pruned: the model has no component override"
