"""Models of another engine than diffusers: their pod (our server in adapter mode, a sidecar engine), no
weights anywhere, their status (CacheReady NotNeeded), the images the operator runs for them, and one
reconcile against the in-memory API. The full manifests are golden files (test_operator_resources.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import HardwareProfile, ImageModelSpec, resolve_resources
from kubediffusion.imagemodel.status import IMAGE_NOT_ALLOWED, MODEL_LOAD_FAILED, NOT_NEEDED, ImageModelStatus
from kubediffusion.operator import status as st
from kubediffusion.operator.cache import cache_state
from kubediffusion.operator.engine_pod import CREDENTIALS_FILE, WORKFLOW_FILE
from kubediffusion.operator.parts import Context, cache_volume, pinned_to_one_node
from kubediffusion.operator.policy import images_refusal, server_image
from kubediffusion.operator.problems import pod_problem
from kubediffusion.operator.reconcile import Refused, reconcile
from kubediffusion.operator.resources import build_cache_job, build_cache_pvc, build_deployment
from kubediffusion.operator.settings import OperatorSettings
from tests.unit.operator.fakekube import FakeKube
from tests.unit.operator.test_operator_resources import restricted_violations

OWNER = names.Owner(name="m", namespace="ns", uid="uid-m")
PROFILES = {"nvidia-l4": HardwareProfile(gpus=1, cpu="4", memory="24Gi", node_selector={"gpu": "l4"})}
URL = {"name": "automatic1111", "url": "http://sd-webui.tools.svc:7860"}
SIDECAR = {"name": "comfyui", "image": "registry.example/comfyui:1", "model": "sd_xl_base_1.0.safetensors"}


def parse(spec: dict[str, Any]) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": spec})


def pod_of(spec: ImageModelSpec, image: str = "adapter:1") -> dict[str, Any]:
    ctx = Context(owner=OWNER, image=image, hardware=resolve_resources(spec.resources, PROFILES))
    pod: dict[str, Any] = build_deployment(spec, ctx, replicas=1)["spec"]["template"]["spec"]
    return pod


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize(
    "engine", [URL, SIDECAR, {"name": "stub"}, {"name": "openai", "url": "https://api.openai.com/v1"}]
)
def test_no_claim_no_job_no_weights_volume_and_no_gpu_for_our_server(engine: dict[str, Any]) -> None:
    spec = parse({"engine": engine, "resources": {"profile": "nvidia-l4"}})
    ctx = Context(owner=OWNER, image="adapter:1", hardware=resolve_resources(spec.resources, PROFILES))
    assert build_cache_pvc(spec, OWNER) is None and build_cache_job(spec, ctx) is None
    assert not pinned_to_one_node(spec, ["ReadWriteOnce"])
    deployment = build_deployment(spec, ctx, replicas=2)
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert "cache" not in {v["name"] for v in pod["volumes"]} and "affinity" not in pod
    [server] = pod["containers"]
    assert server["name"] == "inference" and server["image"] == "adapter:1"
    assert server["command"] == ["kubediffusion", "inference"]
    assert "nvidia.com/gpu" not in str(server["resources"]), "our server needs no GPU"
    env = env_of(server)
    assert env["KD_INFERENCE_ENGINE"] == engine["name"] and env["KD_INFERENCE_MODEL_NAME"] == "m"
    assert not {"KD_INFERENCE_MODEL_DIR", "KD_INFERENCE_DTYPE", "KD_INFERENCE_DEVICE"} & set(env)
    assert names.CACHE_KEY_ANNOTATION not in template["metadata"]["annotations"]
    assert template["metadata"]["labels"][names.ENGINE_LABEL] == engine["name"]
    assert deployment["spec"]["selector"]["matchLabels"] == names.selector("m"), "the selector is every model's"
    assert restricted_violations(pod) == []


def test_a_sidecar_engine_gets_the_gpus_and_runs_beside_our_server_until_it_is_done() -> None:
    spec = parse(
        {
            "engine": {**SIDECAR, "args": ["--port", "8190"], "port": 8190, "env": [{"name": "HOME", "value": "/x"}]},
            "resources": {"profile": "nvidia-l4", "gpus": 2},
        }
    )
    pod = pod_of(spec)
    [sidecar] = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: started first, stopped after our server"
    assert sidecar["image"] == "registry.example/comfyui:1" and sidecar["args"] == ["--port", "8190"]
    assert sidecar["resources"] == {
        "requests": {"nvidia.com/gpu": "2", "cpu": "4", "memory": "24Gi"},
        "limits": {"nvidia.com/gpu": "2", "memory": "24Gi"},
    }
    assert env_of(sidecar) == {"HOME": "/x"}, "its own env wins over the HOME default"
    assert "ports" not in sidecar and "startupProbe" not in sidecar, "it listens on the pod's loopback only"
    assert pod["nodeSelector"] == {"gpu": "l4"}, "the pod goes where the GPUs are"
    [server] = pod["containers"]
    assert env_of(server)["KD_INFERENCE_ENGINE_URL"] == "http://127.0.0.1:8190"
    assert server["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}


def test_without_a_sidecar_the_specs_cpu_and_memory_are_our_servers() -> None:
    pod = pod_of(parse({"engine": URL, "resources": {"cpu": "2", "memory": "2Gi", "gpus": 1}}))
    [server] = pod["containers"]
    assert server["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert "initContainers" not in pod


def test_the_credential_and_the_workflow_are_files_in_our_server_only() -> None:
    spec = parse(
        {
            "engine": {
                "name": "comfyui",
                "image": "registry.example/comfyui:1",
                "credentialsSecretRef": {"name": "proxy", "key": "token"},
                "workflowConfigMapRef": {"name": "wf", "key": "sdxl.json"},
            }
        }
    )
    pod = pod_of(spec)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["engine-credentials"]["secret"] == {
        "secretName": "proxy",
        "items": [{"key": "token", "path": "credential"}],
        "defaultMode": 0o440,
    }
    assert volumes["engine-workflow"]["configMap"] == {
        "name": "wf",
        "items": [{"key": "sdxl.json", "path": "workflow.json"}],
    }
    [server] = pod["containers"]
    env = env_of(server)
    assert env["KD_INFERENCE_ENGINE_API_KEY_FILE"] == CREDENTIALS_FILE
    assert env["KD_INFERENCE_ENGINE_WORKFLOW"] == WORKFLOW_FILE
    assert "KD_INFERENCE_ENGINE_API_KEY" not in env, "the credential is never an env value"
    mounted = {m["mountPath"] for m in server["volumeMounts"]}
    assert {CREDENTIALS_FILE.rsplit("/", 1)[0], WORKFLOW_FILE.rsplit("/", 1)[0]} <= mounted
    [sidecar] = pod["initContainers"]
    assert {m["name"] for m in sidecar["volumeMounts"]} == {"engine-tmp", "dshm"}, "the engine sees neither"


def test_engine_settings_reach_our_server() -> None:
    spec = parse(
        {
            "engine": {
                "name": "openai",
                "url": "https://api.openai.com/v1",
                "model": "dall-e-3",
                "sizes": ["1024x1024", "1792x1024"],
                "maxN": 1,
                "timeoutSeconds": 120,
                "forwardExtensions": False,
            },
            "aliases": ["dall-e-3"],
        }
    )
    env = env_of(pod_of(spec)["containers"][0])
    assert {k: v for k, v in env.items() if k.startswith("KD_INFERENCE_ENGINE")} == {
        "KD_INFERENCE_ENGINE": "openai",
        "KD_INFERENCE_ENGINE_URL": "https://api.openai.com/v1",
        "KD_INFERENCE_ENGINE_MODEL": "dall-e-3",
        "KD_INFERENCE_ENGINE_SIZES": '["1024x1024","1792x1024"]',
        "KD_INFERENCE_ENGINE_MAX_N": "1",
        "KD_INFERENCE_ENGINE_TIMEOUT_SECONDS": "120",
        "KD_INFERENCE_ENGINE_FORWARD_EXTENSIONS": "false",
    }
    assert env["KD_INFERENCE_ALIASES"] == '["dall-e-3"]' and env["KD_INFERENCE_HOST"] == "0.0.0.0"


def test_the_image_of_our_server_and_the_images_the_allow_list_judges() -> None:
    own = ("ghcr.io/kubediffusion/inference:1", "ghcr.io/kubediffusion/kubediffusion:1")
    diffusers, stub = parse({"source": {"tiny": {}}}), parse({"engine": {"name": "stub"}})
    assert server_image(diffusers, inference_image=own[0], adapter_image=own[1]) == own[0]
    assert server_image(stub, inference_image=own[0], adapter_image=own[1]) == own[1]
    mine = parse({"engine": {"name": "stub"}, "image": "ghcr.io/acme/server:2"})
    assert server_image(mine, inference_image=own[0], adapter_image=own[1]) == "ghcr.io/acme/server:2"

    allowed = ["ghcr.io/acme/"]
    assert images_refusal(parse({"engine": {**SIDECAR, "image": "ghcr.io/acme/comfyui:1"}}), allowed, own) is None
    refused = images_refusal(parse({"engine": {**SIDECAR, "image": "evil.example/miner:1"}}), allowed, own)
    assert refused is not None and refused.reason == IMAGE_NOT_ALLOWED
    assert "spec.engine.image 'evil.example/miner:1'" in refused.message
    assert images_refusal(parse({"engine": {"name": "stub"}, "image": own[1]}), allowed, own) is None


def test_the_cache_of_another_engine_is_not_needed_and_ready_follows_the_pods() -> None:
    spec = parse({"engine": URL})
    cache = cache_state(spec, cache_volume(spec, "m"), st.Observed())
    assert (cache.reason, cache.ready, cache.info) == (NOT_NEEDED, True, None)

    def derive(ready: int) -> ImageModelStatus:
        deployment = {
            "metadata": {"generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready},
        }
        seen = st.Observation("m", "ns", 1, spec, st.Observed(deployment=deployment), cache=cache)
        return st.derive_status(seen, previous=ImageModelStatus(), now="2026-01-01T00:00:00Z")

    loading, ready = derive(0), derive(1)
    assert loading.phase == "Loading" and loading.cache is None
    ready_condition = loading.condition("Ready")
    assert ready_condition is not None and "waiting for engine automatic1111 to answer" in ready_condition.message
    cache_ready = ready.condition("CacheReady")
    assert (
        ready.phase == "Ready"
        and cache_ready is not None
        and (cache_ready.ok, cache_ready.reason) == (True, NOT_NEEDED)
    )
    assert ready.source == "automatic1111: http://sd-webui.tools.svc:7860" and ready.smoke_test is False


def test_a_crashing_sidecar_engine_is_model_load_failed_not_a_download() -> None:
    crashed = {
        "name": "engine",
        "ready": False,
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}},
    }
    pod = {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [crashed], "containerStatuses": []}}
    problem = pod_problem([pod])
    assert problem is not None and problem.reason == MODEL_LOAD_FAILED
    assert problem.message == "engine container restarted 3 time(s): CUDA out of memory"
    pulling = {**crashed, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
    pod["status"]["initContainerStatuses"] = [pulling]
    assert (pod_problem([pod]) or problem).reason == "ImagePullBackOff"


def model(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1}
    return {"apiVersion": "kubediffusion.io/v1alpha1", "kind": "ImageModel", "metadata": meta, "spec": spec}


def run(kube: FakeKube, settings: OperatorSettings) -> Any:
    return reconcile(kube, settings, namespace="ns", name="m", post_event=lambda body, event: None, now=lambda: "t")


def test_a_reconcile_applies_only_the_deployment_and_service_with_the_adapter_image() -> None:
    kube = FakeKube(model({"engine": {"name": "stub"}}))
    outcome = run(kube, OperatorSettings(inference_image="torch:1", adapter_image="small:1"))
    assert outcome is not None and outcome.phase == "Loading"
    assert sorted(kind for kind, _ in kube.objects) == ["Deployment", "ImageModel", "Service"]
    deployment = kube.objects[("Deployment", "im-m")]
    assert deployment["spec"]["replicas"] == 1, "nothing to wait for before pods start"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "small:1"
    [written] = kube.status_writes
    assert written["smokeTest"] is True and "cache" not in written
    assert {c["type"]: c["reason"] for c in written["conditions"]}["CacheReady"] == NOT_NEEDED


def test_a_sidecar_image_outside_the_allow_list_is_refused_and_nothing_applied() -> None:
    kube = FakeKube(model({"engine": {**SIDECAR, "image": "evil.example/miner:1"}}))
    with pytest.raises(Refused, match=IMAGE_NOT_ALLOWED):
        run(kube, OperatorSettings(allowed_images=["ghcr.io/acme/"]))
    assert [kind for kind, _ in kube.objects] == ["ImageModel"]
