"""tests/images/kubelet.py: pod specs -> podman run arguments (the images tier runs the images this way)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.operator.resources import Context, build_cache_job, build_deployment
from tests.images.kubelet import quantity_bytes, run_args
from tests.unit.chart.helm_cli import EXAMPLES_DIR

IMAGE = "localhost/kubediffusion-inference:test"


def tiny_pods() -> tuple[dict[str, object], dict[str, object]]:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text()))
    ctx = Context(
        owner=names.Owner(name="tiny-cpu", namespace="default", uid="u"),
        image=IMAGE,
        hardware=resolve_resources(spec.resources, {}),
    )
    job = build_cache_job(spec, ctx)
    assert job is not None
    return job["spec"]["template"]["spec"], build_deployment(spec, ctx, replicas=1)["spec"]["template"]["spec"]


def pairs(args: list[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(args))


def test_model_pod_runs_restricted_with_the_claim_read_only(tmp_path: Path) -> None:
    _, pod = tiny_pods()
    args = run_args(pod, "inference", host_paths={"cache": tmp_path})
    user = names.RUN_AS_USER
    assert ("--user", f"{user}:{user}") in pairs(args) and ("--group-add", str(user)) in pairs(args)
    assert "--read-only" in args and "--read-only-tmpfs=false" in args
    assert ("--security-opt", "no-new-privileges") in pairs(args) and ("--cap-drop", "ALL") in pairs(args)
    assert ("--mount", f"type=bind,source={tmp_path},destination={names.MODELS_MOUNT},ro") in pairs(args)
    assert ("--mount", "type=tmpfs,destination=/tmp,tmpfs-mode=0777") in pairs(args)
    assert ("--shm-size", str(2**30)) in pairs(args)
    assert ("--memory", str(2 * 2**30)) in pairs(args)
    assert ("--publish", f"127.0.0.1::{names.PORT}") in pairs(args)
    assert ("--env", "KD_INFERENCE_DEVICE=cpu") in pairs(args) and ("--env", "HF_HUB_OFFLINE=1") in pairs(args)
    # command replaces the entrypoint; the image comes last (no args in the spec).
    assert ("--entrypoint", json.dumps(["kubediffusion", "inference"])) in pairs(args)
    assert args[-1] == IMAGE


def test_cache_job_writes_the_claim_and_gets_a_termination_log(tmp_path: Path) -> None:
    pod, _ = tiny_pods()
    log = tmp_path / "termination-log"
    args = run_args(pod, "fetch", host_paths={"cache": tmp_path}, termination_log=log)
    assert ("--mount", f"type=bind,source={tmp_path},destination={names.MODELS_MOUNT}") in pairs(args)
    assert ("--mount", f"type=bind,source={log},destination=/dev/termination-log") in pairs(args)
    assert args[args.index(IMAGE) + 1 :] == list(pod["containers"][0]["args"])  # type: ignore[index]


def test_what_a_kubelet_would_need_is_asked_for_not_guessed(tmp_path: Path) -> None:
    _, pod = tiny_pods()
    with pytest.raises(ValueError, match="needs a host directory"):
        run_args(pod, "inference")
    secret_env = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    pod["containers"][0]["env"].append(secret_env)  # type: ignore[index]
    with pytest.raises(ValueError, match="TOKEN"):
        run_args(pod, "inference", host_paths={"cache": tmp_path})
    assert ("--env", "TOKEN=x") in pairs(run_args(pod, "inference", host_paths={"cache": tmp_path}, env={"TOKEN": "x"}))
    pod["securityContext"] = {"runAsNonRoot": True}
    with pytest.raises(ValueError, match="runAsNonRoot"):
        run_args(pod, "inference", host_paths={"cache": tmp_path})


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("2Gi", 2 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("64", 64), (1024, 1024), ("1.5Gi", 3 * 2**29)],
)
def test_quantities(quantity: str | int, expected: int) -> None:
    assert quantity_bytes(quantity) == expected


def test_unknown_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        quantity_bytes("2 gigs")
