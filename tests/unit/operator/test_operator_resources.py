"""Pure builders: whole manifests from one typed spec; a few golden files pin the full output."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits
from kubediffusion.fetch import main as fetch_main
from kubediffusion.fetch import options as fetch_options
from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import HardwareProfile, ImageModelSpec, resolve_resources
from kubediffusion.operator.policy import DownloadPolicy
from kubediffusion.operator.resources import (
    Context,
    build_cache_job,
    build_cache_pvc,
    build_deployment,
    build_service,
    cache_volume,
)

GOLDEN = Path(__file__).parent / "golden"
OWNER = names.Owner(name="sdxl", namespace="models", uid="0000-uid")
PROFILES = {"nvidia-l4": HardwareProfile(gpus=1, node_selector={"gpu": "l4"})}


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": spec})


def ctx(spec: ImageModelSpec, image: str = "registry.example/inference:1") -> Context:
    return Context(owner=OWNER, image=image, hardware=resolve_resources(spec.resources, PROFILES))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


HF = {"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo", "revision": "abc123"}}}


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" checks that apply to what we build."""
    out = []
    psc = pod_spec.get("securityContext", {})
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        out.append("pod seccompProfile")
    for c in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            out.append(f"{c['name']}: capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
    for v in pod_spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= {"persistentVolumeClaim", "ephemeral", "emptyDir", "configMap", "secret", "projected"}:
            out.append(f"volume {v['name']}: {kinds}")
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        out.append("host namespaces")
    return out


@pytest.mark.parametrize(
    "raw",
    [
        HF,
        {"source": {"url": "https://models.example/sdxl.tar.gz"}, "resources": {"gpus": 2}},
        {"source": {"tiny": {}}, "resources": {"gpus": 0}},
        {"source": {"pvc": {"claimName": "shared", "path": "sdxl"}}},
        {"source": {"url": "https://models.example/sdxl.tar.gz"}, "cache": {"mode": "perNode"}},
    ],
)
def test_every_pod_passes_the_restricted_pod_security_standard(raw: dict[str, Any]) -> None:
    spec = parse(raw)
    deployment = build_deployment(spec, ctx(spec), replicas=1)
    assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    job = build_cache_job(spec, ctx(spec))
    if job is not None:
        assert restricted_violations(job["spec"]["template"]["spec"]) == []
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


@pytest.mark.parametrize(
    ("raw", "claim", "model_dir", "has_pvc", "has_job"),
    [
        (HF, "im-sdxl-cache", "KEY", True, True),
        ({**HF, "cache": {"existingClaim": "mine"}}, "mine", "KEY", False, True),
        ({"source": {"pvc": {"claimName": "shared", "path": "sdxl"}}}, "shared", "/models/sdxl", False, False),
        ({"source": {"pvc": {"claimName": "shared"}}}, "shared", "/models", False, False),
        ({"source": {"tiny": {}}}, "im-sdxl-cache", "KEY", True, True),
    ],
)
def test_cache_volume_per_source(raw: dict[str, Any], claim: str, model_dir: str, has_pvc: bool, has_job: bool) -> None:
    spec = parse(raw)
    # A downloaded source has a directory of its own (KEY: /models/<cache key>), so a new one goes beside it.
    model_dir = names.cache_dir(spec.source.cache_key()) if model_dir == "KEY" else model_dir
    assert cache_volume(spec, OWNER.name).claim_name == claim
    assert (build_cache_pvc(spec, OWNER) is not None) is has_pvc
    assert (build_cache_job(spec, ctx(spec)) is not None) is has_job
    pod = build_deployment(spec, ctx(spec), replicas=1)["spec"]["template"]["spec"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in pod["volumes"]
    container = pod["containers"][0]
    assert {"name": "cache", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert env_of(container)["KD_INFERENCE_MODEL_DIR"] == model_dir


@pytest.mark.parametrize(("retain", "owned"), [(True, False), (False, True)])
def test_retained_cache_pvc_has_no_owner_reference(retain: bool, owned: bool) -> None:
    pvc = build_cache_pvc(parse({**HF, "cache": {"retainOnDelete": retain, "size": "50Gi"}}), OWNER)
    assert pvc is not None
    assert ("ownerReferences" in pvc["metadata"]) is owned
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["metadata"]["name"] == "im-sdxl-cache"


def test_storage_class_and_access_mode_pass_through() -> None:
    pvc = build_cache_pvc(parse({**HF, "cache": {"storageClassName": "fast", "accessMode": "ReadWriteMany"}}), OWNER)
    assert pvc is not None
    assert pvc["spec"]["storageClassName"] == "fast" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(
    ("source", "args_tail"),
    [
        ({"huggingface": {"repo": "a/b", "revision": "v2"}}, ["--huggingface", "a/b", "--revision", "v2"]),
        ({"url": "https://h/m.tgz"}, ["--url", "https://h/m.tgz", "--max-bytes", "20Gi"]),
        ({"url": "s3://bucket/prefix"}, ["--url", "s3://bucket/prefix"]),
        ({"tiny": {"kind": "sdxl"}}, ["--tiny", "sdxl"]),
    ],
)
def test_cache_job_runs_fetch_model_for_the_source(source: dict[str, Any], args_tail: list[str]) -> None:
    spec = parse({"source": source})
    job = build_cache_job(spec, ctx(spec))
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["kubediffusion", "fetch-model"]
    dest = names.cache_dir(spec.source.cache_key())
    assert container["args"][:5] == ["--dest", dest, "--termination-log", "/dev/termination-log", "--prune"]
    assert container["args"][5:] == args_tail
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["ownerReferences"] == [OWNER.reference()]


@pytest.mark.parametrize(
    ("raw", "policy", "tail"),
    [
        ({"source": {"url": "https://h/m.tgz"}}, DownloadPolicy(), ["--max-bytes", "20Gi"]),
        (
            {"source": {"url": "https://h/m.tgz"}, "cache": {"size": "1.5Ti"}},
            DownloadPolicy(),
            ["--max-bytes", "1.5Ti"],
        ),
        # An existing claim's size is not the operator's to know: fetch-model uses the volume's free space.
        ({"source": {"url": "https://h/m.tgz"}, "cache": {"existingClaim": "mine"}}, DownloadPolicy(), []),
        (
            {"source": {"url": "http://10.0.0.5/m.tgz"}},
            DownloadPolicy(allow_http=True, allowed_networks=("10.0.0.0/24",), allowed_hosts=("*.internal",)),
            ["--allow-http", "--allow-network", "10.0.0.0/24", "--allow-host", "*.internal", "--max-bytes", "20Gi"],
        ),
        # fetch-model applies neither policy nor archive limits to these: they stay out of the Job.
        ({"source": {"url": "s3://bucket/prefix"}}, DownloadPolicy(allow_http=True), []),
        ({"source": {"huggingface": {"repo": "a/b"}}}, DownloadPolicy(allow_http=True), ["--revision", "main"]),
        ({"source": {"tiny": {}}}, DownloadPolicy(allow_http=True), ["--tiny", "sd"]),
    ],
    ids=["https", "size", "existing-claim", "policy", "s3", "huggingface", "tiny"],
)
def test_cache_job_passes_the_download_policy_and_the_volume_size_to_url_downloads(
    raw: dict[str, Any], policy: DownloadPolicy, tail: list[str]
) -> None:
    spec = parse(raw)
    job = build_cache_job(spec, dataclasses.replace(ctx(spec), download=policy))
    assert job is not None
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[len(args) - len(tail) :] == tail
    if spec.source.url is not None and not spec.source.url.startswith("s3://"):
        assert args[5:7] == ["--url", spec.source.url] and len(args) == 7 + len(tail)


def test_fetch_model_reads_the_policy_the_operator_passes() -> None:
    """The contract between the two: fetch-model's own parser turns the Job's args into the same policy."""
    spec = parse({"source": {"url": "http://mirror.internal/m.tar.gz"}, "cache": {"size": "2Gi"}})
    policy = DownloadPolicy(allow_http=True, allowed_networks=("10.0.0.0/8", "fd00::/8"), allowed_hosts=("*.internal",))
    job = build_cache_job(spec, dataclasses.replace(ctx(spec), download=policy))
    assert job is not None
    parser = fetch_main._parser()
    args = parser.parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"])
    got = fetch_options.policy_from(args, parser)
    assert got.allow_http and got.allowed_hosts == ("*.internal",)
    assert [str(n) for n in got.allowed_networks] == ["10.0.0.0/8", "fd00::/8"]
    assert fetch_options.limits_from(args).max_bytes == 2 << 30


def test_token_secret_is_env_from_secret_key_ref() -> None:
    spec = parse({"source": {"huggingface": {"repo": "a/b", "tokenSecretRef": {"name": "hf"}}}})
    job = build_cache_job(spec, ctx(spec))
    assert job is not None
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_job_template_hash_changes_with_the_template_and_cache_key_with_the_source() -> None:
    a = parse(HF)
    b = parse({**HF, "resources": {"nodeSelector": {"zone": "b"}}})
    c = parse({"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo", "revision": "def456"}}})
    ja, jb, jc = (build_cache_job(s, ctx(s)) for s in (a, b, c))
    assert ja and jb and jc
    key, tmpl = names.CACHE_KEY_ANNOTATION, names.TEMPLATE_HASH_ANNOTATION
    assert ja["metadata"]["annotations"][key] == jb["metadata"]["annotations"][key]
    assert ja["metadata"]["annotations"][tmpl] != jb["metadata"]["annotations"][tmpl]
    assert ja["metadata"]["annotations"][key] != jc["metadata"]["annotations"][key]


def test_inference_env_follows_the_contract() -> None:
    spec = parse(
        {
            **HF,
            "aliases": ["dall-e-2"],
            "dtype": "bfloat16",
            "defaults": {"steps": 4, "size": "512x512"},
            "limits": {"maxSize": 1024, "maxN": 2},
            "presets": {"anime": {"prompt": "{prompt}, anime style", "negativePrompt": "photo"}},
            "serving": {"maxBatchSize": 8, "batchWindowMs": 50, "maxQueue": 32, "compile": True, "warmup": False},
        }
    )
    container = build_deployment(spec, ctx(spec), replicas=1)["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert container["command"] == ["kubediffusion", "inference"] and "args" not in container
    assert env["KD_INFERENCE_MODEL_NAME"] == "sdxl"
    assert json.loads(env["KD_INFERENCE_ALIASES"]) == ["dall-e-2"]
    assert env["KD_INFERENCE_DTYPE"] == "bfloat16" and env["KD_INFERENCE_DEVICE"] == "cuda"
    assert (env["KD_INFERENCE_HOST"], env["KD_INFERENCE_PORT"]) == ("0.0.0.0", "8000")
    assert env["KD_INFERENCE_MAX_BATCH_SIZE"] == "8" and env["KD_INFERENCE_BATCH_WINDOW_MS"] == "50"
    assert env["KD_INFERENCE_MAX_QUEUE"] == "32"
    assert (env["KD_INFERENCE_COMPILE"], env["KD_INFERENCE_WARMUP"]) == ("true", "false")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert GenerationDefaults.model_validate_json(env["KD_INFERENCE_DEFAULTS"]).size == "512x512"
    assert GenerationLimits.model_validate_json(env["KD_INFERENCE_LIMITS"]).max_n == 2
    assert json.loads(env["KD_INFERENCE_PRESETS"]) == {
        "anime": {"prompt": "{prompt}, anime style", "negativePrompt": "photo"}
    }


@pytest.mark.parametrize(
    ("resources", "requests", "limits"),
    [
        ({}, {"nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}),
        ({"gpus": 0, "cpu": "4", "memory": "16Gi"}, {"cpu": "4", "memory": "16Gi"}, {"memory": "16Gi"}),
        ({"gpus": 2, "gpuResourceName": "amd.com/gpu"}, {"amd.com/gpu": "2"}, {"amd.com/gpu": "2"}),
        ({"profile": "nvidia-l4", "memory": "24Gi"}, {"nvidia.com/gpu": "1", "memory": "24Gi"}, None),
    ],
)
def test_gpu_requests_and_limits(
    resources: dict[str, Any], requests: dict[str, str], limits: dict[str, str] | None
) -> None:
    spec = parse({**HF, "resources": resources})
    res = build_deployment(spec, ctx(spec), replicas=1)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == requests
    if limits is not None:
        assert res["limits"] == limits


def test_scheduling_fields_pass_through() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spec = parse(
        {
            **HF,
            "resources": {
                "nodeSelector": {"pool": "gpu"},
                "tolerations": tolerations,
                "affinity": affinity,
                "priorityClassName": "inference",
                "runtimeClassName": "nvidia",
            },
        }
    )
    pod = build_deployment(spec, ctx(spec), replicas=1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == tolerations
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "inference" and pod["runtimeClassName"] == "nvidia"
    job_pod = build_cache_job(spec, ctx(spec))["spec"]["template"]["spec"]  # type: ignore[index]
    assert job_pod["nodeSelector"] == {"pool": "gpu"} and job_pod["tolerations"] == tolerations


@pytest.mark.parametrize("replicas", [0, 1, 3])
def test_deployment_shape(replicas: int) -> None:
    spec = parse(HF)
    dep = build_deployment(spec, ctx(spec), replicas=replicas)
    assert dep["metadata"]["name"] == "im-sdxl" and dep["spec"]["replicas"] == replicas
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert dep["spec"]["selector"]["matchLabels"] == names.selector("sdxl")
    template = dep["spec"]["template"]
    assert names.selector("sdxl").items() <= template["metadata"]["labels"].items()
    container = template["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"


def test_spec_change_changes_the_pod_template() -> None:
    def template(raw: dict[str, Any]) -> Any:
        spec = parse(raw)
        return build_deployment(spec, ctx(spec), replicas=1)["spec"]["template"]

    base = template(HF)
    assert template(HF) == base
    assert template({**HF, "serving": {"maxBatchSize": 2}}) != base
    assert template({**HF, "replicas": 4}) == base  # scaling is not a rollout
    new_source = template({"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo", "revision": "new"}}})
    assert new_source["metadata"]["annotations"] != base["metadata"]["annotations"]


def test_service_and_labels() -> None:
    spec = parse({"source": {"tiny": {}}})
    svc = build_service(spec, OWNER)
    assert svc["metadata"]["name"] == "im-sdxl"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == {"kubediffusion.io/model": "sdxl", "app.kubernetes.io/component": "inference"}
    labels = svc["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kubediffusion-inference"
    assert labels["app.kubernetes.io/managed-by"] == "kubediffusion-operator"
    assert labels["kubediffusion.io/smoke-test"] == "true"


def test_cache_job_pods_are_not_selected_by_the_service() -> None:
    spec = parse(HF)
    job = build_cache_job(spec, ctx(spec))
    assert job is not None
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not build_service(spec, OWNER)["spec"]["selector"].items() <= pod_labels.items()


def test_builders_are_pure() -> None:
    spec = parse(HF)
    assert build_deployment(spec, ctx(spec), replicas=1) == build_deployment(spec, ctx(spec), replicas=1)
    assert build_cache_job(spec, ctx(spec)) == build_cache_job(spec, ctx(spec))


GOLDEN_CASES = {
    "huggingface": {**HF, "resources": {"profile": "nvidia-l4"}, "aliases": ["dall-e-2"]},
    "tiny-cpu": {"source": {"tiny": {}}, "resources": {"gpus": 0}, "cache": {"retainOnDelete": False, "size": "1Gi"}},
    "url": {"source": {"url": "https://models.example/sdxl.tar.gz"}, "cache": {"size": "40Gi"}},
    # Engines other than diffusers: no claim, no Job, no weights volume (test_operator_engine_pod.py).
    "automatic1111-url": {
        "engine": {
            "name": "automatic1111",
            "url": "http://sd-webui.tools.svc:7860",
            "credentialsSecretRef": {"name": "sd-webui-auth", "key": "auth"},
            "model": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
            "maxN": 4,
            "timeoutSeconds": 300,
        },
        "aliases": ["sd15-webui"],
        "defaults": {"steps": 20, "guidance": 7.0, "size": "512x512"},
    },
    "comfyui-sidecar": {
        "engine": {
            "name": "comfyui",
            "image": "registry.example/comfyui:1",
            "args": ["--port", "8188"],
            "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
            "workflowConfigMapRef": {"name": "comfyui-workflow", "key": "sdxl.json"},
            "sampler": "dpmpp_2m",
        },
        "resources": {"profile": "nvidia-l4"},
    },
    "stub": {"engine": {"name": "stub"}, "resources": {"gpus": 0}},
    "per-node": {"source": {"url": "https://models.example/sdxl.tar.gz"}, "cache": {"mode": "perNode", "size": "40Gi"}},
}
GOLDEN_POLICY = DownloadPolicy(allowed_networks=("10.20.0.0/16",), allowed_hosts=("models.example",))


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_manifests(case: str) -> None:
    spec = parse(GOLDEN_CASES[case])
    objs = [
        build_cache_pvc(spec, OWNER),
        build_cache_job(spec, dataclasses.replace(ctx(spec), download=GOLDEN_POLICY)),
        build_deployment(spec, ctx(spec), replicas=1),
        build_service(spec, OWNER),
    ]
    text = yaml.safe_dump_all([o for o in objs if o is not None], sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path} is stale: rerun with UPDATE_GOLDEN=1 and review the diff"
