"""scripts/images/build.sh, the one build script of the images tier, the release workflow and the kind
quickstart: what it asks each engine to do (the engines are stand-ins that record their arguments),
and the pins the local base images must share with the Dockerfiles."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit.docker.dockerfile import DOCKERFILES, REPO_ROOT, parse

BUILD = REPO_ROOT / "scripts" / "images" / "build.sh"
RELEASE = REPO_ROOT / ".github" / "workflows" / "release.yml"
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def build(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run build.sh with fake podman and docker that record each call (one argument per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for engine in ("podman", "docker"):
        fake = bin_dir / engine
        fake.write_text(f'#!/bin/sh\n{{ echo "{engine}"; printf "%s\\n" "$@"; echo "--"; }} >>"{calls}"\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("GITHUB_SERVER_URL", None)
    env.pop("KUBEDIFFUSION_CA_BUNDLE", None)
    result = subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, env=env, check=False)
    recorded = calls.read_text().split("--\n")[:-1] if calls.exists() else []
    return result, [call.splitlines() for call in recorded]


def build_args(call: list[str]) -> dict[str, str]:
    return dict(call[i + 1].split("=", 1) for i, arg in enumerate(call) if arg == "--build-arg")


def test_podman_builds_both_images_on_the_given_bases(tmp_path: Path) -> None:
    report = tmp_path / "report"
    result, calls = build(
        tmp_path, "--engine", "podman", "--python-image", "local/python:1", "--torch-image", "local/torch:1",
        "--ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    operator, inference = calls
    assert operator[:2] == ["podman", "build"] and inference[:2] == ["podman", "build"]
    assert build_args(operator) == {"VERSION": VERSION, "REVISION": build_args(operator)["REVISION"],
                                    "PYTHON_IMAGE": "local/python:1"}  # fmt: skip
    assert build_args(inference)["TORCH_IMAGE"] == "local/torch:1" and "PYTHON_IMAGE" not in build_args(inference)
    ca = "/etc/ssl/certs/ca-certificates.crt"
    assert "--network=host" in operator and f"{ca}:{ca}:ro" in operator
    assert operator[operator.index("--tag") + 1] == f"kubediffusion:{VERSION}"
    assert inference[inference.index("--file") + 1] == "Dockerfile.inference" and inference[-1] == "."
    assert [line.split("\t")[:2] for line in report.read_text().splitlines()] == [
        ["operator", f"kubediffusion:{VERSION}"], ["inference", f"kubediffusion-inference:{VERSION}"],
    ]  # fmt: skip


def test_docker_pushes_multi_platform_with_the_same_build_arguments(tmp_path: Path) -> None:
    result, (call,) = build(
        tmp_path, "--engine", "docker", "--repository", "ghcr.io/kd/", "--tag", "9.9.9",
        "--platform", "linux/amd64,linux/arm64", "--push", "--metadata-dir", str(tmp_path / "meta"), "operator",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert call[:3] == ["docker", "buildx", "build"]
    assert call[call.index("--platform") + 1] == "linux/amd64,linux/arm64"
    assert "--push" in call and "--load" not in call and "--sbom=true" in call
    assert call[call.index("--metadata-file") + 1] == str(tmp_path / "meta" / "operator.json")
    assert call[call.index("--tag") + 1] == "ghcr.io/kd/kubediffusion:9.9.9"
    # The public pinned base: no base argument, the Dockerfile's default.
    assert set(build_args(call)) == {"VERSION", "REVISION"} and build_args(call)["VERSION"] == VERSION


def test_a_local_docker_build_loads_the_image(tmp_path: Path) -> None:
    result, (call,) = build(tmp_path, "--engine", "docker", "--tag", "dev", "inference")
    assert result.returncode == 0, result.stderr
    assert "--load" in call and call[call.index("--tag") + 1] == "kubediffusion-inference:dev"


@pytest.mark.parametrize(
    "args",
    [["--engine", "podman", "--push"], ["--engine", "docker", "--ca-bundle", "/x"], ["--engine", "nerdctl"],
     ["--bogus"]],
)  # fmt: skip
def test_unsupported_combinations_are_refused_before_building(tmp_path: Path, args: list[str]) -> None:
    result, calls = build(tmp_path, *args)
    assert result.returncode == 2 and calls == [], result.stderr


def test_help_lists_the_options(tmp_path: Path) -> None:
    result, calls = build(tmp_path, "--help")
    assert result.returncode == 0 and calls == []
    assert all(option in result.stdout for option in ("--engine", "--push", "--torch-image", "--ca-bundle"))


def test_release_and_test_tier_build_with_the_same_script() -> None:
    steps = yaml.safe_load(RELEASE.read_text())["jobs"]["release"]["steps"]
    runs = [step.get("run", "") for step in steps]
    builds = [run for run in runs if "scripts/images/build.sh" in run]
    assert len(builds) == 2 and all("--engine docker" in run and "--push" in run for run in builds)
    assert "linux/amd64,linux/arm64" in builds[0] and builds[0].rstrip().endswith("operator")
    assert builds[1].rstrip().endswith("inference")
    assert [run for run in runs if "cosign sign" in run] and [run for run in runs if "helm push" in run]
    assert "bash scripts/images/build.sh --engine podman" in (REPO_ROOT / "scripts" / "test-images.sh").read_text()


def test_local_torch_base_is_the_torch_of_the_pinned_base_and_of_the_lock() -> None:
    """scripts/images/torch-base.txt stands in for TORCH_IMAGE: the same torch, as scripts/lock.sh assumes."""
    torch_image = parse(DOCKERFILES["inference"]).args["TORCH_IMAGE"]
    tag_torch = re.match(r"pytorch/pytorch:(\d+\.\d+\.\d+)-", torch_image)
    assert tag_torch, torch_image
    local = re.search(r"^torch==(\S+)", (REPO_ROOT / "scripts" / "images" / "torch-base.txt").read_text(), re.M)
    locked = re.search(r"^TORCH_VERSION=(\S+)", (REPO_ROOT / "scripts" / "lock.sh").read_text(), re.M)
    assert local and locked
    assert tag_torch[1] == local[1] == locked[1]
