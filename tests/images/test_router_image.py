"""The operator/router image (Dockerfile.operator) run from the pod specs the chart renders."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.images.conftest import Images
from tests.images.containers import Container, Podman
from tests.images.kubelet import container, prepare_volume, run_args
from tests.unit.chart.helm_cli import Manifest, one

pytestmark = pytest.mark.images

API_KEY = "kd-images-tier-key"
MODELS_DIR = "/etc/kubediffusion/models"
ROUTER_ENV = {"KD_ROUTER_DISCOVERY": "static", "KD_ROUTER_STATIC_CONFIG": f"{MODELS_DIR}/models.yaml"}


def chart_pod(docs: list[Manifest], component: str) -> Manifest:
    return copy.deepcopy(one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"])


def secret_files(pod: Manifest, volume: str, content: str) -> dict[str, str]:
    """The one item of a Secret volume, keyed as the Secret would be."""
    (spec,) = [v["secret"] for v in pod["volumes"] if v["name"] == volume]
    (item,) = spec["items"]
    return {item["key"]: content}


def router_pod(docs: list[Manifest], tmp_path: Path, models: list[Manifest]) -> tuple[Manifest, dict[str, Path]]:
    """The chart's router pod and host directories for its Secrets and claim, as a kubelet would mount
    them. The one departure from the chart: models come from a file (static discovery, see ROUTER_ENV)
    instead of the API server."""
    pod = chart_pod(docs, "router")
    pod["volumes"].append({"name": "models", "configMap": {"name": "models"}})
    container(pod, "router")["volumeMounts"].append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    host = {
        "storage": prepare_volume(pod, "storage", tmp_path / "storage"),
        "signing-key": prepare_volume(
            pod, "signing-key", tmp_path / "signing-key", secret_files(pod, "signing-key", "k" * 48)
        ),
        "api-keys": prepare_volume(pod, "api-keys", tmp_path / "api-keys", secret_files(pod, "api-keys", API_KEY)),
        "models": prepare_volume(pod, "models", tmp_path / "models", {"models.yaml": yaml.safe_dump(models)}),
    }
    return pod, host


def start_router(podman: Podman, docs: list[Manifest], tmp_path: Path, models: list[Manifest]) -> Container:
    pod, host = router_pod(docs, tmp_path, models)
    return podman.start(run_args(pod, "router", host_paths=host, env=ROUTER_ENV), role="router")


def test_chart_runs_the_images_built_here_with_its_default_tag(chart_docs: list[Manifest], images: Images) -> None:
    """The chart's default tag is its appVersion; the build tags the package version: they must agree."""
    for component in ("operator", "router"):
        assert container(chart_pod(chart_docs, component), component)["image"] == images.operator
    env = {e["name"]: e.get("value") for e in container(chart_pod(chart_docs, "operator"), "operator")["env"]}
    assert env["KD_OPERATOR_INFERENCE_IMAGE"] == images.inference
    assert env["KD_OPERATOR_ADAPTER_IMAGE"] == images.operator


@pytest.mark.parametrize("component", ["operator", "router"])
def test_help_runs_as_the_chart_runs_the_container(
    podman: Podman, chart_docs: list[Manifest], tmp_path: Path, component: str
) -> None:
    """Non-root, read-only root filesystem, no capabilities, no new privileges: the CLI still starts."""
    if component == "router":
        pod, host = router_pod(chart_docs, tmp_path, [])
    else:
        pod, host = chart_pod(chart_docs, component), {}
    spec = container(pod, component)
    spec.pop("ports", None)
    for args, expected in ((["--help"], "usage: kubediffusion"), ([component, "--help"], "usage:")):
        spec["args"] = args
        result = podman.once(run_args(pod, component, host_paths=host))
        assert result.returncode == 0, result.stdout + result.stderr
        assert expected in result.stdout, result.stdout


def test_router_serves_a_static_model_list(podman: Podman, chart_docs: list[Manifest], tmp_path: Path) -> None:
    models: list[Manifest] = [
        {"name": "tiny-cpu", "aliases": ["tiny"], "default": True, "endpoints": ["http://192.0.2.10:8000"]},
        {"name": "sdxl-turbo", "endpoints": []},
    ]
    router = start_router(podman, chart_docs, tmp_path, models)
    base = router.wait_http(8080, "/readyz", timeout=90)

    refused = httpx.get(f"{base}/v1/models", timeout=10)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["type"]

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    assert {m.id for m in client.models.list()} >= {"tiny-cpu", "sdxl-turbo"}
    assert router.running()
    assert_runs_restricted(router, uid=10001, writable=["/tmp", "/var/lib/kubediffusion/images"])


def assert_runs_restricted(running: Container, uid: int, writable: list[str]) -> None:
    """What the pod spec asked for is what the process got: its user, no capabilities, no new
    privileges, and nothing writable but the volumes."""
    status = running.main_process()
    assert status["Uid"].split()[0] == str(uid) and status["Gid"].split()[0] == str(uid), status
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1", status
    assert "ro" in running.mount_options("/"), running.mount_options("/")
    assert not running.can_write("/opt/venv/probe", user="0"), "not even root may write the root filesystem"
    for path in writable:
        assert running.can_write(f"{path}/probe"), f"{path} should be writable"
