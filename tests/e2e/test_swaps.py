"""New weights without downtime: an http-archive source changes while traffic runs. The new archive is
downloaded beside the serving copy, the pods roll once it is complete, no request fails, and the old copy
is removed from the cache volume afterwards."""

from __future__ import annotations

import http.server
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.tinymodel import write_tiny_pipeline
from tests.cluster.operator_fixture import get_model, patch_model_spec
from tests.e2e.stack import E2EStack, decode_image
from tests.support.provisioner import claim_directory
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

MODEL = "swapped"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two tarballs of the tiny pipeline (v1, v2: different bytes) behind an HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("archives")
    for version in ("v1", "v2"):
        write_tiny_pipeline(root / version)
        with tarfile.open(root / f"{version}.tar.gz", "w:gz") as tar:
            tar.add(root / version, arcname="tiny-sd")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def cache(stack: E2EStack) -> dict[str, object]:
    return dict(((get_model(stack.api, stack.namespace, MODEL) or {}).get("status") or {}).get("cache") or {})


def copy_dir(stack: E2EStack, source_url: str) -> Path:
    """Where the cache Job put (or puts) this source, in the directory backing the claim."""
    key = ImageModelSpec.from_body({"spec": {"source": {"url": source_url}}}).source.cache_key()
    claim = claim_directory(stack.runner.volume_root, stack.namespace, names.cache_claim_name(MODEL))
    return claim / names.cache_dir(key).removeprefix(f"{names.MODELS_MOUNT}/")


def test_a_new_archive_rolls_in_under_traffic_without_a_failed_request(e2e_stack: E2EStack, archives: str) -> None:
    stack = e2e_stack
    v1, v2 = f"{archives}/v1.tar.gz", f"{archives}/v2.tar.gz"
    stack.apply_model(MODEL, {"source": {"url": v1}, "replicas": 1})
    stack.wait_ready(MODEL)
    old = cache(stack)
    assert str(old["revision"]).startswith("sha256:") and copy_dir(stack, v1).is_dir()

    outcomes: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        client = stack.client(max_retries=0, timeout=60.0)
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                result = client.images.generate(model=MODEL, prompt="swap", size="64x64", response_format="b64_json")
                assert decode_image(result.data[0].b64_json or "").size == (64, 64)
                outcomes.append("ok")
            except (openai.APIError, AssertionError) as exc:
                errors.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 4, timeout=60, interval=0.1, message="traffic flowing")
        patch_model_spec(stack.api, stack.namespace, MODEL, {"source": {"url": v2}})
        # While the new copy downloads, the old one keeps serving and status says which is which.
        pending = wait_for(lambda: cache(stack).get("pending") or cache(stack).get("retiring"), timeout=60,
                           interval=0.2, message="the swap in status")  # fmt: skip
        assert pending

        def swapped() -> bool:
            now = cache(stack)
            return (
                now.get("revision") not in (None, old["revision"])
                and "pending" not in now
                and "retiring" not in now
                and not copy_dir(stack, v1).exists()
                and stack.routed_endpoints(MODEL) == 1
            )

        wait_for(swapped, timeout=180, interval=0.3, message=f"new revision served, old copy gone: {cache(stack)}")
        settled = len(outcomes)
        wait_for(lambda: len(outcomes) >= settled + 4, timeout=60, interval=0.1, message="traffic after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
    assert not errors, errors[:3]
    assert copy_dir(stack, v2).is_dir() and str(cache(stack)["path"]).endswith(copy_dir(stack, v2).name)
