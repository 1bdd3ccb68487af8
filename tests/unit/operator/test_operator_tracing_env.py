"""The operator's OTLP endpoint reaches the model server of every pod kind (and only it), as
KD_INFERENCE_OTLP_ENDPOINT; without one, pods get nothing about tracing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.operator.resources import Context, build_deployment
from kubediffusion.operator.settings import OperatorSettings

OWNER = names.Owner(name="traced", namespace="models", uid="0000-uid")
COLLECTOR = "http://otel-collector.monitoring:4318"
SPECS = {
    "diffusers": {"source": {"tiny": {}}, "resources": {"gpus": 0}},
    "stub": {"engine": {"name": "stub"}, "resources": {"gpus": 0}},
    "sidecar": {
        "engine": {"name": "comfyui", "image": "ghcr.io/example/comfyui:1", "model": "sd.safetensors"},
        "resources": {"gpus": 0},
    },
}


def deployment(spec: dict[str, Any], otlp_endpoint: str = "") -> dict[str, Any]:
    parsed = ImageModelSpec.from_body({"spec": spec})
    hardware = resolve_resources(parsed.resources, {})
    ctx = Context(owner=OWNER, image="registry.example/inference:1", hardware=hardware, otlp_endpoint=otlp_endpoint)
    return build_deployment(parsed, ctx, replicas=1)


def envs(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    pod = manifest["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    return {c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])} for c in containers}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_the_model_server_gets_the_operators_otlp_endpoint(kind: str) -> None:
    traced = envs(deployment(SPECS[kind], otlp_endpoint=COLLECTOR))
    assert traced["inference"]["KD_INFERENCE_OTLP_ENDPOINT"] == COLLECTOR
    assert all("KD_INFERENCE_OTLP_ENDPOINT" not in env for name, env in traced.items() if name != "inference")
    untraced = envs(deployment(SPECS[kind]))
    assert all(not any("OTLP" in variable for variable in env) for env in untraced.values())
    assert {k: v for k, v in traced["inference"].items() if k != "KD_INFERENCE_OTLP_ENDPOINT"} == untraced["inference"]


def test_the_operator_setting_is_an_http_url_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorSettings().otlp_endpoint == ""
    monkeypatch.setenv("KD_OPERATOR_OTLP_ENDPOINT", COLLECTOR)
    assert OperatorSettings().otlp_endpoint == COLLECTOR
    for bad in ("otel-collector:4318", "http://a b"):
        with pytest.raises(ValidationError):
            OperatorSettings(otlp_endpoint=bad)
