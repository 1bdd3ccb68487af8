"""spec.adapters / scheduler / components / safety: parsed with the model server's own rules, fetched into
the model's copy by the cache Job (one fetch-model each, after the model's), passed to the server as
KD_INFERENCE_* JSON with in-pod paths, and a change of them is a new copy beside the serving one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from kubediffusion.api.pipelines import AdapterConfig, ComponentConfig, SafetyConfig, SchedulerConfig
from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import HardwareProfile, ImageModelSpec, InvalidSpecError
from kubediffusion.operator.cache import extra_revisions
from kubediffusion.operator.pipelines import extra_volumes, pipeline_settings
from kubediffusion.operator.policy import DownloadPolicy
from kubediffusion.operator.problems import fetch_summaries, fetch_summary, job_failure
from kubediffusion.operator.resources import Context, build_cache_job, build_deployment
from tests.unit.operator.test_operator_swaps import OLD, World, serving

OWNER = names.Owner(name="m", namespace="ns", uid="uid")
HF = {"huggingface": {"repo": "stabilityai/stable-diffusion-xl-base-1.0"}}
LORA_URL = "https://example.com/style-a.tar.gz"


def parse(**spec: Any) -> ImageModelSpec:
    return ImageModelSpec.from_body({"spec": {"source": HF, **spec}})


def ctx(download: DownloadPolicy | None = None) -> Context:
    if download is None:
        return Context(owner=OWNER, image="img:1", hardware=HardwareProfile())
    return Context(owner=OWNER, image="img:1", hardware=HardwareProfile(), download=download)


FULL = {
    "adapters": [
        {"name": "style-a", "source": {"url": LORA_URL}},
        {
            "name": "pixel_art",
            "source": {"huggingface": {"repo": "nerijs/pixel-art-xl", "tokenSecretRef": {"name": "hf"}}},
            "file": "pixel-art-xl.safetensors",
            "defaultScale": -0.5,
        },
        {"name": "house", "source": {"pvc": {"claimName": "loras", "path": "house/"}}},
    ],
    "scheduler": {
        "name": "EulerDiscreteScheduler",
        "config": {"timestep_spacing": "trailing"},
        "allowed": ["DDIMScheduler"],
    },
    "components": {
        "unet": {
            "source": {"huggingface": {"repo": "ByteDance/SDXL-Lightning"}},
            "file": "sdxl_lightning_4step_unet.safetensors",
        },
        "vae": {"source": {"pvc": {"claimName": "vaes"}}},
    },
    "safety": {
        "checker": "CompVis/stable-diffusion-safety-checker",
        "action": "blur",
        "blockedTerms": ["gore", "nud*"],
    },
}


def test_the_extras_of_a_spec_in_a_fixed_order_with_dns_label_container_names() -> None:
    spec = parse(**FULL)
    got = [(e.subdir, e.container, e.fetched) for e in spec.extras]
    assert got == [
        ("adapters/style-a", "adapter-0", True),
        ("adapters/pixel_art", "adapter-1", True),
        ("adapters/house", "adapter-2", False),
        ("components/unet", "component-unet", True),
        ("components/vae", "component-vae", False),
        ("safety-checker", "safety-checker", True),
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"adapters": [{"name": "a.b", "source": {"url": LORA_URL}}]}, "adapters.0.name"),
        ({"adapters": [{"name": "a:b", "source": {"url": LORA_URL}}]}, "adapters.0.name"),
        ({"adapters": [{"name": "A", "source": {"url": LORA_URL}}]}, "adapters.0.name"),
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL}, "defaultScale": 2.5}]}, "adapters.0.defaultScale"),
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL}, "file": "a.bin"}]}, "adapters.0"),
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL}, "file": "../a.safetensors"}]}, "adapters.0"),
        ({"adapters": [{"name": "a", "source": {}}]}, "adapters.0.source"),
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL, "pvc": {"claimName": "c"}}}]}, "adapters.0.source"),
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL}}] * 2}, "adapters.1.name"),
        ({"adapters": [{"name": f"a{i}", "source": {"url": LORA_URL}} for i in range(65)]}, "adapters"),
        ({"scheduler": {"name": "Euler-Discrete"}}, "scheduler.name"),
        ({"scheduler": {"allowed": ["1DDIM"]}}, "scheduler.allowed.0"),
        ({"components": {"text_encoder": {"source": HF}}}, "components.text_encoder"),
        ({"components": {"unet": {"source": HF, "file": "unet.ckpt"}}}, "components.unet"),
        ({"safety": {"action": "black"}}, "safety.action"),
        ({"safety": {"checker": "/models/checker"}}, "safety.checker"),
        ({"safety": {"blockedTerms": ["***"]}}, "safety.blockedTerms"),
    ],
)
def test_what_the_model_server_would_refuse_is_an_invalid_spec(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        parse(**spec)
    assert err.value.field == field


STUB = {"engine": {"name": "stub"}}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"adapters": [{"name": "a", "source": {"url": LORA_URL}}]}, "adapters"),
        ({"scheduler": {"name": "DDIMScheduler"}}, "scheduler"),
        ({"components": {"vae": {"source": HF}}}, "components"),
        ({"safety": {"checker": "pipeline"}}, "safety.checker"),
        ({"safety": {"checker": "CompVis/stable-diffusion-safety-checker"}}, "safety.checker"),
    ],
)
def test_another_engine_takes_only_blocked_terms(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        ImageModelSpec.from_body({"spec": {**STUB, **spec}})
    assert err.value.field == field


def test_an_engine_model_with_blocked_terms_gets_only_them() -> None:
    spec = ImageModelSpec.from_body({"spec": {**STUB, "safety": {"blockedTerms": ["gore"], "checker": "none"}}})
    assert pipeline_settings(spec, "") == {"SAFETY": '{"blockedTerms":["gore"],"checker":"none"}'}
    env = {
        e["name"]: e["value"]
        for e in build_deployment(spec, ctx(), replicas=1)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["KD_INFERENCE_SAFETY"])["blockedTerms"] == ["gore"]
    assert "KD_INFERENCE_ADAPTERS" not in env


def test_a_pvc_model_cannot_have_extras_downloaded_but_may_mount_them() -> None:
    pvc = {"pvc": {"claimName": "weights"}}
    with pytest.raises(InvalidSpecError) as err:
        ImageModelSpec.from_body({"spec": {"source": pvc, "adapters": [{"name": "a", "source": {"url": LORA_URL}}]}})
    assert err.value.field == "adapters.0.source"
    mounted = [{"name": "a", "source": {"pvc": {"claimName": "loras"}}}]
    assert ImageModelSpec.from_body({"spec": {"source": pvc, "adapters": mounted}}).adapters[0].name == "a"


def test_the_weights_key_is_the_sources_without_fetched_extras_and_changes_with_them() -> None:
    plain = parse()
    assert plain.weights_key() == plain.source.cache_key()  # an operator upgrade downloads nothing again
    mounted = parse(adapters=[{"name": "a", "source": {"pvc": {"claimName": "loras"}}}])
    assert mounted.weights_key() == plain.weights_key()  # a pvc is mounted, not part of the copy
    one = parse(adapters=[{"name": "a", "source": {"url": LORA_URL}}])
    two = parse(adapters=[{"name": "a", "source": {"url": LORA_URL}}, {"name": "b", "source": {"url": LORA_URL}}])
    other_file = parse(adapters=[{"name": "a", "source": {"url": LORA_URL}, "file": "x.safetensors"}])
    scaled = parse(adapters=[{"name": "a", "source": {"url": LORA_URL}, "defaultScale": 0.5}])
    keys = {plain.weights_key(), one.weights_key(), two.weights_key(), other_file.weights_key()}
    assert len(keys) == 4
    assert scaled.weights_key() == one.weights_key()  # a scale is a setting, not weights
    b_first = parse(adapters=[{"name": "b", "source": {"url": LORA_URL}}, {"name": "a", "source": {"url": LORA_URL}}])
    assert b_first.weights_key() == two.weights_key()  # reordering the list downloads nothing


def test_settings_are_the_servers_own_types_with_in_pod_paths() -> None:
    spec = parse(**FULL)
    settings = pipeline_settings(spec, "/models/k")
    adapters = TypeAdapter(list[AdapterConfig]).validate_json(settings["ADAPTERS"])
    assert [(a.name, a.path, a.file, a.default_scale) for a in adapters] == [
        ("style-a", "/models/k/adapters/style-a", None, 1.0),
        ("pixel_art", "/models/k/adapters/pixel_art", "pixel-art-xl.safetensors", -0.5),
        ("house", "/extras/adapters/house", None, 1.0),
    ]
    scheduler = SchedulerConfig.model_validate_json(settings["SCHEDULER"])
    assert scheduler == SchedulerConfig(
        name="EulerDiscreteScheduler", config={"timestep_spacing": "trailing"}, allowed=["DDIMScheduler"]
    )
    components = TypeAdapter(dict[str, ComponentConfig]).validate_json(settings["COMPONENTS"])
    assert components["unet"] == ComponentConfig(
        path="/models/k/components/unet", file="sdxl_lightning_4step_unet.safetensors"
    )
    assert components["vae"] == ComponentConfig(path="/extras/components/vae")
    safety = SafetyConfig.model_validate_json(settings["SAFETY"])
    assert (safety.checker, safety.action, safety.blocked_terms) == (
        "/models/k/safety-checker",
        "blur",
        ["gore", "nud*"],
    )


def test_a_model_without_pipeline_fields_gets_no_pipeline_settings() -> None:
    assert pipeline_settings(parse(), "/models/k") == {}
    assert pipeline_settings(parse(safety={"checker": "none"}), "/models/k") == {
        "SAFETY": '{"action":"reject","allowLowModeration":false,"blockedTerms":[],"checker":"none"}'
    }


def test_the_deployment_points_the_server_inside_the_copy_and_mounts_pvc_extras() -> None:
    spec = parse(**FULL)
    pod = build_deployment(spec, ctx(), replicas=1)["spec"]["template"]["spec"]
    server = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    copy = names.cache_dir(spec.weights_key())
    assert env["KD_INFERENCE_MODEL_DIR"] == copy
    assert json.loads(env["KD_INFERENCE_ADAPTERS"])[0]["path"] == f"{copy}/adapters/style-a"
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/extras/adapters/house"] == {
        "name": "extras-0",
        "mountPath": "/extras/adapters/house",
        "readOnly": True,
        "subPath": "house",
    }
    assert mounts["/extras/components/vae"] == {
        "name": "extras-1",
        "mountPath": "/extras/components/vae",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["extras-0"]["persistentVolumeClaim"] == {"claimName": "loras", "readOnly": True}
    assert volumes["extras-1"]["persistentVolumeClaim"] == {"claimName": "vaes", "readOnly": True}


def test_one_claim_holding_several_extras_is_one_volume() -> None:
    spec = parse(adapters=[{"name": n, "source": {"pvc": {"claimName": "loras", "path": n}}} for n in ("a", "b")])
    volumes, mounts = extra_volumes(spec)
    assert [v["name"] for v in volumes] == ["extras-0"]
    assert [(m["name"], m["subPath"]) for m in mounts] == [("extras-0", "a"), ("extras-0", "b")]


def test_the_cache_job_fetches_the_model_first_then_each_extra_with_the_same_policy() -> None:
    spec = parse(**FULL)
    policy = DownloadPolicy(allow_http=True, allowed_hosts=("example.com",))
    job = build_cache_job(spec, ctx(policy))
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    containers = [*pod["initContainers"], *pod["containers"]]
    assert [c["name"] for c in containers] == ["fetch", "adapter-0", "adapter-1", "component-unet", "safety-checker"]
    copy = names.cache_dir(spec.weights_key())
    assert job["metadata"]["annotations"][names.CACHE_KEY_ANNOTATION] == spec.weights_key()
    assert containers[0]["args"][:2] == ["--dest", copy] and "--prune" in containers[0]["args"]
    lora = containers[1]["args"]
    assert lora[:2] == ["--dest", f"{copy}/adapters/style-a"] and "--prune" not in lora
    assert lora[lora.index("--content") + 1] == "weights"
    assert [*policy.fetch_flags(), "--max-bytes", spec.cache.size] == lora[lora.index(LORA_URL) + 1 :]
    pixel = containers[2]
    assert pixel["args"][pixel["args"].index("--file") + 1] == "pixel-art-xl.safetensors"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in pixel["env"]
    assert not any(e["name"] == "HF_TOKEN" for e in containers[0]["env"])
    unet = containers[3]["args"]
    assert unet[unet.index("--huggingface") + 1] == "ByteDance/SDXL-Lightning"
    checker = containers[4]["args"]
    assert checker[checker.index("--huggingface") + 1] == "CompVis/stable-diffusion-safety-checker"
    (rule, _) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["onExitCodes"] == {"operator": "In", "values": [2]}  # every container is fetch-model


def test_a_model_without_extras_keeps_its_one_container_job() -> None:
    job = build_cache_job(parse(), ctx())
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    assert "initContainers" not in pod and [c["name"] for c in pod["containers"]] == ["fetch"]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["containerName"] == "fetch"


def test_a_per_node_cache_fetches_the_extras_in_init_containers_too() -> None:
    spec = parse(cache={"mode": "perNode"}, adapters=[{"name": "a", "source": {"url": LORA_URL}}])
    pod = build_deployment(spec, ctx(), replicas=1)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "adapter-0"]


def _pod(
    phase: str, init: list[tuple[str, int, dict[str, Any]]], main: tuple[str, int, dict[str, Any]]
) -> dict[str, Any]:
    def status(name: str, code: int, summary: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "state": {"terminated": {"exitCode": code, "message": json.dumps(summary)}}}

    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": phase,
            "initContainerStatuses": [status(*s) for s in init],
            "containerStatuses": [status(*main)],
        },
    }


def test_the_summaries_of_every_fetch_container_and_the_models_own() -> None:
    pod = _pod(
        "Succeeded",
        [("fetch", 0, {"revision": "base"}), ("adapter-0", 0, {"revision": "sha256:a"})],
        ("component-unet", 0, {"revision": "u"}),
    )
    assert fetch_summary([pod]) == {"revision": "base"}
    summaries = fetch_summaries([pod])
    assert set(summaries) == {"fetch", "adapter-0", "component-unet"}
    spec = parse(
        adapters=[{"name": "style-a", "source": {"url": LORA_URL}}],
        components={"unet": {"source": {"huggingface": {"repo": "ByteDance/SDXL-Lightning"}}}},
    )
    assert extra_revisions(spec, summaries) == {"adapters/style-a": "sha256:a", "components/unet": "u"}


def test_a_failed_extra_fetch_is_the_jobs_failure() -> None:
    pod = _pod(
        "Failed",
        [("fetch", 0, {"revision": "base"}), ("adapter-0", 2, {"error": "the archive has no .safetensors file"})],
        ("component-unet", 0, {}),
    )
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
    failure = job_failure({"status": {}}, [pod])
    assert "no .safetensors" in failure.message


def test_adding_an_adapter_downloads_a_new_copy_beside_the_serving_one() -> None:
    world = serving(World(_body(OLD)))
    old_copy = world.weights()
    world.change_source(OLD, adapters=[{"name": "style-a", "source": {"url": LORA_URL}}])
    world.reconcile()  # the old Job (other weights) is deleted ...
    world.reconcile()  # ... and the new one made
    spec = ImageModelSpec.from_body(world.kube.objects[("ImageModel", "m")])
    new_copy = names.cache_dir(spec.weights_key())
    assert new_copy != old_copy and world.weights() == old_copy  # the old copy serves meanwhile
    pod = world.job()["spec"]["template"]["spec"]
    assert [c["name"] for c in [*pod["initContainers"], *pod["containers"]]] == ["fetch", "adapter-0"]
    assert world.status.cache is not None and world.status.cache.pending is not None
    job = world.job()
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T00:02:00Z"}
    world.kube.objects[("Pod", "job-pod")] = {
        "metadata": {"name": "job-pod", "labels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}},
        "status": {
            "phase": "Succeeded",
            "initContainerStatuses": [
                {"name": "fetch", "state": {"terminated": {"exitCode": 0, "message": '{"revision": "tiny-sd"}'}}}
            ],
            "containerStatuses": [
                {"name": "adapter-0", "state": {"terminated": {"exitCode": 0, "message": '{"revision": "sha256:abc"}'}}}
            ],
        },
    }
    world.reconcile()
    assert world.weights() == new_copy
    env = {e["name"]: e.get("value") for e in world.deployment()["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["KD_INFERENCE_ADAPTERS"]) == [
        {"name": "style-a", "path": f"{new_copy}/adapters/style-a", "defaultScale": 1.0}
    ]
    cache = world.status.cache
    assert cache is not None and cache.revision == "tiny-sd" and cache.extras == {"adapters/style-a": "sha256:abc"}


def _body(source: dict[str, Any]) -> dict[str, Any]:
    from tests.unit.operator.test_operator_swaps import body

    return body(source)


def test_the_sdxl_lightning_example_serves_the_distilled_unet_in_4_steps_without_guidance() -> None:
    from tests.support.examples import EXAMPLES_DIR, image_model

    spec = ImageModelSpec.from_body(image_model(EXAMPLES_DIR / "sdxl-lightning.yaml"))
    defaults = spec.effective_defaults
    assert (defaults.steps, defaults.guidance, defaults.size) == (4, 0.0, "1024x1024")
    assert spec.effective_limits.max_steps == 4
    settings = pipeline_settings(spec, "/models/k")
    assert SchedulerConfig.model_validate_json(settings["SCHEDULER"]).config == {"timestep_spacing": "trailing"}
    unet = TypeAdapter(dict[str, ComponentConfig]).validate_json(settings["COMPONENTS"])["unet"]
    assert unet == ComponentConfig(path="/models/k/components/unet", file="sdxl_lightning_4step_unet.safetensors")
    job = build_cache_job(spec, ctx())
    assert job is not None
    unet_args = job["spec"]["template"]["spec"]["initContainers"][1]["args"]
    assert unet_args[unet_args.index("--file") + 1] == "sdxl_lightning_4step_unet.safetensors", "only that file"


@pytest.mark.parametrize("case", ["full", "engine"])
def test_the_model_server_starts_with_the_env_the_operator_builds(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its own settings class, from the container's env as the pod has it: the spec and the server agree.
    from kubediffusion.inference.settings import InferenceSettings

    body = (
        {**STUB, "safety": {"blockedTerms": ["gore"], "checker": "none"}}
        if case == "engine"
        else {"source": HF, **FULL}
    )
    spec = ImageModelSpec.from_body({"spec": body})
    server = build_deployment(spec, ctx(), replicas=1)["spec"]["template"]["spec"]["containers"][0]
    for var in server["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    settings = InferenceSettings()
    assert settings.safety.blocked_terms == list(spec.safety.blocked_terms if spec.safety else [])
    if case == "full":
        assert [a.name for a in settings.adapters] == ["style-a", "pixel_art", "house"]
        assert settings.scheduler.name == "EulerDiscreteScheduler" and set(settings.components) == {"unet", "vae"}
        assert settings.safety.checker_path == f"{settings.model_dir}/safety-checker"


def test_a_refused_pipeline_fails_the_model_with_invalid_spec_naming_the_field() -> None:
    from kubediffusion.operator.reconcile import Refused
    from tests.unit.operator.test_operator_swaps import body

    world = World(body({"pvc": {"claimName": "weights"}}, adapters=[{"name": "a", "source": {"url": LORA_URL}}]))
    with pytest.raises(Refused, match="InvalidSpec"):
        world.reconcile()
    status = world.status
    assert status.phase == "Failed" and status.last_failure is not None
    assert status.last_failure.reason == "InvalidSpec"
    assert status.last_failure.message.startswith("spec.adapters.0.source:"), status.last_failure.message
    assert ("Job", "im-m-cache") not in world.kube.objects
