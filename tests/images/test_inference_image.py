"""The model server image (Dockerfile.inference) run from the pods the operator builds for
examples/tiny-cpu.yaml: the cache Job fills the claim, the model pod serves it read-only, and the
router image in front of it answers the official openai client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import openai
import pytest
import yaml
from PIL import Image

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.operator.resources import Context, build_cache_job, build_deployment
from tests.images.conftest import Images
from tests.images.containers import Podman
from tests.images.kubelet import prepare_volume, run_args
from tests.images.test_router_image import API_KEY, assert_runs_restricted, start_router
from tests.unit.chart.helm_cli import EXAMPLES_DIR, Manifest

pytestmark = pytest.mark.images


def tiny_model() -> tuple[ImageModelSpec, Context]:
    spec = ImageModelSpec.from_body(yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text()))
    owner = names.Owner(name="tiny-cpu", namespace="default", uid="images-tier")
    return spec, Context(owner=owner, image="", hardware=resolve_resources(spec.resources, {}))


def test_tiny_model_is_cached_served_and_generated_through_the_router(
    podman: Podman, images: Images, chart_docs: list[Manifest], tmp_path: Path
) -> None:
    spec, ctx = tiny_model()
    ctx = Context(owner=ctx.owner, image=images.inference, hardware=ctx.hardware)

    # The cache Job, its claim a host directory the pod's fsGroup may write.
    job = build_cache_job(spec, ctx)
    assert job is not None
    job_pod = job["spec"]["template"]["spec"]
    claim = prepare_volume(job_pod, "cache", tmp_path / "claim")
    termination_log = tmp_path / "termination-log"
    termination_log.touch(mode=0o666)
    fetch = podman.start(
        run_args(job_pod, "fetch", host_paths={"cache": claim}, termination_log=termination_log), role="fetch"
    )
    assert fetch.wait_exit(timeout=240) == 0, fetch.logs()[-4000:]
    written = {p: p.stat().st_mtime_ns for p in claim.rglob("*")}
    assert written and all(p.stat().st_uid == names.RUN_AS_USER for p in written), "the Job runs as RUN_AS_USER"

    # The model pod: the claim read-only, a writable /tmp, nothing else writable.
    model_pod = build_deployment(spec, ctx, replicas=1)["spec"]["template"]["spec"]
    server = podman.start(run_args(model_pod, "inference", host_paths={"cache": claim}), role="inference")
    server.wait_http(names.PORT, "/readyz", timeout=300)

    # The router in front of it, as a static model list built from the same spec.
    entry = {
        "name": ctx.owner.name,
        "aliases": list(spec.aliases),
        "default": spec.default,
        "defaults": spec.effective_defaults.model_dump(mode="json", by_alias=True),
        "limits": spec.effective_limits.model_dump(mode="json", by_alias=True),
        "endpoints": [f"http://{server.ip()}:{names.PORT}"],
    }
    router = start_router(podman, chart_docs, tmp_path / "router", [entry])
    base = router.wait_http(8080, "/readyz", timeout=90)

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    result = client.images.generate(
        model="tiny-cpu",
        prompt="a lighthouse at dawn",
        size="64x64",
        response_format="b64_json",
        extra_body={"num_inference_steps": 2, "seed": 1},
    )
    assert result.data and result.data[0].b64_json
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (64, 64)
    assert server.running() and router.running()
    assert_runs_restricted(server, uid=names.RUN_AS_USER, writable=["/tmp", "/dev/shm"])
    assert not server.can_write(f"{names.MODELS_MOUNT}/probe"), "the claim is mounted read-only"
    # The server only read the claim (mounted read-only): it is as the Job left it.
    assert {p: p.stat().st_mtime_ns for p in claim.rglob("*")} == written
