"""ImageModelSpec: parse once, defaults that depend on the source, profiles, refusals with field names."""

from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.api.limits import GenerationDefaults
from kubediffusion.imagemodel.spec import (
    HardwareProfile,
    ImageModelSpec,
    InvalidSpecError,
    Resources,
    resolve_resources,
)
from kubediffusion.imagemodel.tiny import TINY_DEFAULTS


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": spec})


def test_minimal_huggingface_spec_gets_documented_defaults() -> None:
    spec = parse({"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo"}}})
    assert spec.source.kind == "huggingface"
    assert spec.source.huggingface is not None and spec.source.huggingface.revision == "main"
    assert spec.replicas is None and spec.desired_replicas == 1, "absent: 1 (and /scale reads 0 until set)"
    assert spec.pipeline == "auto" and spec.cache.retain_on_delete is True
    assert (spec.cache.mode, spec.cache.swap, spec.autoscaling) == ("shared", "sideBySide", None)
    assert spec.effective_defaults == GenerationDefaults()
    assert spec.effective_dtype(gpus=1) == "auto", "the server picks bfloat16 where the GPU has it"
    assert spec.effective_dtype(gpus=0) == "float32"
    assert spec.source.describe() == "hf:stabilityai/sdxl-turbo@main"


def test_tiny_source_gets_tiny_defaults_and_limits_and_is_a_smoke_test() -> None:
    spec = parse({"source": {"tiny": {}}})
    assert spec.is_smoke_test
    assert spec.effective_defaults.size == "64x64" and spec.effective_defaults.steps == 2
    assert spec.effective_defaults == TINY_DEFAULTS and spec.effective_defaults.guidance > 1  # CFG, like real models
    assert (spec.effective_limits.min_size, spec.effective_limits.max_size) == (32, 256)
    assert spec.effective_dtype(gpus=1) == "float32"
    assert "smoke test" in spec.source.describe()


def test_a_url_source_is_described_without_credentials_or_query() -> None:
    # status.source is a printer column anyone who can list ImageModels reads: no presigned signature there.
    spec = parse({"source": {"url": "https://user:pw@cdn.example/m.tar.gz?X-Amz-Signature=s3cr3t#frag"}})
    assert spec.source.describe() == "https://cdn.example/m.tar.gz"
    long = parse({"source": {"url": "https://cdn.example/" + "d/" * 40 + "m.tar.gz?sig=1"}}).source.describe()
    assert len(long) == 60 and long.endswith("...") and "sig" not in long


def test_tiny_source_keeps_explicit_defaults() -> None:
    spec = parse({"source": {"tiny": {}}, "defaults": {"size": "128x128", "steps": 3}})
    assert spec.effective_defaults.size == "128x128"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "source"),
        ({"source": {}}, "source"),
        ({"source": {"tiny": {}, "url": "https://x/m.tar"}}, "source"),
        ({"source": {"tiny": {}}, "replicas": -1}, "replicas"),
        ({"source": {"tiny": {}}, "limits": {"minSize": 512, "maxSize": 256}}, "limits"),
        ({"source": {"tiny": {}}, "defaults": {"size": "1024x1024"}}, "defaults.size"),
        ({"source": {"tiny": {}}, "defaults": {"steps": 9}}, "defaults.steps"),
        ({"source": {"tiny": {}}, "limits": {"minSize": 512}}, "limits"),
        ({"source": {"tiny": {}}, "unknownField": 1}, "unknownField"),
        ({"source": {"tiny": {}}, "dtype": "int8"}, "dtype"),
    ],
)
def test_unservable_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse(spec)
    assert info.value.field.startswith(field), str(info.value)
    assert str(info.value).startswith("spec.")


def test_missing_spec_is_refused() -> None:
    with pytest.raises(InvalidSpecError):
        ImageModelSpec.from_body({})


def test_cache_key_changes_with_the_source_only() -> None:
    a = parse({"source": {"huggingface": {"repo": "a/b", "revision": "v1"}}})
    b = parse({"source": {"huggingface": {"repo": "a/b", "revision": "v2"}}})
    c = parse({"source": {"huggingface": {"repo": "a/b", "revision": "v1"}}, "replicas": 3})
    assert a.source.cache_key() != b.source.cache_key()
    assert a.source.cache_key() == c.source.cache_key()


PROFILES = {
    "nvidia-l4": HardwareProfile(
        gpus=1, node_selector={"gpu": "l4"}, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]
    ),
    "cpu-big": HardwareProfile(gpus=0, cpu="8", memory="32Gi"),
}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({}, {"gpus": 1, "gpu_resource_name": "nvidia.com/gpu", "node_selector": {}}),
        ({"gpus": 0}, {"gpus": 0}),
        ({"gpus": 2, "gpuResourceName": "amd.com/gpu"}, {"gpus": 2, "gpu_resource_name": "amd.com/gpu"}),
        ({"profile": "nvidia-l4"}, {"gpus": 1, "node_selector": {"gpu": "l4"}}),
        ({"profile": "nvidia-l4", "gpus": 2}, {"gpus": 2, "node_selector": {"gpu": "l4"}}),
        ({"profile": "cpu-big", "memory": "64Gi"}, {"gpus": 0, "cpu": "8", "memory": "64Gi"}),
        (
            {"nodeSelector": {"a": "b"}, "priorityClassName": "high"},
            {"node_selector": {"a": "b"}, "priority_class_name": "high"},
        ),
    ],
)
def test_profile_is_overlaid_by_explicit_fields(resources: dict[str, Any], expected: dict[str, Any]) -> None:
    resolved = resolve_resources(Resources.model_validate(resources), PROFILES)
    for key, value in expected.items():
        assert getattr(resolved, key) == value


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(InvalidSpecError) as info:
        resolve_resources(Resources(profile="h100"), PROFILES)
    assert info.value.field == "resources.profile"
    assert "'h100'" in str(info.value) and "nvidia-l4" in str(info.value)


def test_spec_module_imports_neither_kopf_nor_kubernetes() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kubediffusion.imagemodel.spec as s; "
        "bad = [m for m in ('kopf', 'kubernetes') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_partial_defaults_and_limits_overlay_the_base() -> None:
    spec = parse({"source": {"tiny": {}}, "defaults": {"steps": 3}, "limits": {"maxN": 2}})
    assert spec.effective_defaults.size == "64x64" and spec.effective_defaults.steps == 3
    assert spec.effective_limits.max_size == 256 and spec.effective_limits.max_n == 2


def test_autoscaling_defaults_and_the_replicas_it_starts_from() -> None:
    spec = parse({"source": {"tiny": {}}, "autoscaling": {"maxReplicas": 3}})
    auto = spec.autoscaling
    assert auto is not None and (auto.min_replicas, auto.max_replicas) == (1, 3)
    assert (auto.scale_down_delay_seconds, auto.idle_seconds_before_zero) == (300, 600)
    assert spec.desired_replicas == 1 and spec.target_images_per_replica == spec.serving.max_batch_size
    to_zero = parse({"source": {"tiny": {}}, "autoscaling": {"minReplicas": 0, "maxReplicas": 2,
                                                                "targetImagesPerReplica": 2}})  # fmt: skip
    assert to_zero.desired_replicas == 0 and to_zero.target_images_per_replica == 2
    scaled = parse({"source": {"tiny": {}}, "replicas": 2, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}})
    assert scaled.desired_replicas == 2, "the autoscaler's /scale write wins over minReplicas"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "autoscaling"),
        ({"autoscaling": {"minReplicas": 0}}, "autoscaling.maxReplicas"),
        ({"cache": {"mode": "perNode", "existingClaim": "c"}}, "cache.mode"),
        ({"cache": {"swap": "inPlace"}}, "cache.swap"),
    ],
)
def test_unservable_elastic_specs_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        parse({"source": {"tiny": {}}, **spec})
    assert err.value.field == field
