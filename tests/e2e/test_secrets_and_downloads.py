"""Least privilege and the download policy, end to end.

- A gated Hugging Face model names a token Secret. The operator never reads Secrets: the kubelet (the
  pod runner, resolving ``secretKeyRef`` as a kubelet does) keeps the cache Job's container waiting
  while the Secret or its key is missing, the model says ``SecretNotFound`` with the kubelet's words,
  and it heals by itself once the Secret exists: fetch-model downloads with the token and the model
  serves. The Hub is a stand-in on 127.0.0.1 (``tests/e2e/fakehub.py``), reached through an image whose
  ENV sets ``HF_ENDPOINT``.
- A url source whose server redirects to the cloud metadata address: the operator allows http from the
  server's own address only (tests/e2e/conftest.py), fetch-model refuses the redirect, and the model is
  ``Failed`` with ``DownloadFailed`` naming the refusal.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from kubediffusion.tinymodel import write_tiny_pipeline
from tests.cluster.operator_fixture import condition, get_model, list_objects, wait_phase
from tests.e2e.fakehub import COMMIT, FakeHub
from tests.e2e.stack import E2EStack, decode_image
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = "org/gated"
TOKEN = "hf_e2e_0123456789"
MIRROR_IMAGE = "kubediffusion/inference:hub-mirror"  # the test image, with HF_ENDPOINT in its ENV
GATED = "gated"
SECRET = "hf-token"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    root = tmp_path_factory.mktemp("hub") / "repo"
    write_tiny_pipeline(root)
    served = FakeHub(REPO, root, TOKEN).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack, hub: FakeHub) -> Iterator[E2EStack]:
    e2e_stack.runner.image_env[MIRROR_IMAGE] = {"HF_ENDPOINT": hub.url}
    try:
        yield e2e_stack
    finally:
        e2e_stack.runner.image_env.pop(MIRROR_IMAGE, None)


def _cache_message(stack: E2EStack, name: str, words: str) -> dict[str, object] | None:
    model = get_model(stack.api, stack.namespace, name)
    cache = condition(model, "CacheReady")
    return model if cache.get("reason") == "SecretNotFound" and words in cache.get("message", "") else None


def test_a_missing_token_secret_is_secret_not_found_until_it_exists(stack: E2EStack, hub: FakeHub) -> None:
    core = client.CoreV1Api(stack.api)
    ns = stack.namespace
    spec = {"source": {"huggingface": {"repo": REPO, "tokenSecretRef": {"name": SECRET}}}, "image": MIRROR_IMAGE}
    stack.apply_model(GATED, spec)

    model = wait_phase(stack.api, ns, GATED, "Failed", timeout=120, CacheReady="SecretNotFound")
    assert f'secret "{SECRET}" not found' in condition(model, "CacheReady")["message"]
    assert model["status"]["lastFailure"]["reason"] == "SecretNotFound"
    jobs = list_objects(stack.api, f"/apis/batch/v1/namespaces/{ns}/jobs", f"kubediffusion.io/model={GATED}")
    assert [j["metadata"]["name"] for j in jobs] == [f"im-{GATED}-cache"], "the Job exists; its pod waits"
    assert hub.requests == [], "fetch-model has not run"

    # A Secret without the key the model names: still SecretNotFound, now in the kubelet's words for a key.
    core.create_namespaced_secret(ns, {"metadata": {"name": SECRET}, "stringData": {"other": "x"}})
    wait_for(
        lambda: _cache_message(stack, GATED, f"couldn't find key token in Secret {ns}/{SECRET}"),
        timeout=60,
        interval=0.3,
        message="SecretNotFound for the missing key",
    )

    # The key: the kubelet starts the container by itself (no edit of the model), fetch-model downloads
    # the gated repository with the token, and the model serves.
    core.patch_namespaced_secret(SECRET, ns, {"data": {"token": base64.b64encode(TOKEN.encode()).decode()}})
    model = stack.wait_ready(GATED)
    assert condition(model, "CacheReady")["reason"] == "Downloaded"
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {TOKEN}"}, "every request carried the Secret's token"
    assert ("GET", f"/{REPO}/resolve/{COMMIT}/model_index.json") in {(m, p) for m, p, _ in hub.requests}
    result = stack.client().images.generate(model=GATED, prompt="gated", size="64x64", response_format="b64_json")
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)


@pytest.fixture(scope="module")
def redirector() -> Iterator[str]:
    """An http server on 127.0.0.1 that redirects every archive to the cloud metadata address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/model.tar.gz?token=s3cr3t")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_redirected_to_an_internal_address_fails_naming_the_refusal(
    stack: E2EStack, redirector: str
) -> None:
    stack.apply_model("redirected", {"source": {"url": f"{redirector}/model.tar.gz"}})
    model = wait_phase(stack.api, stack.namespace, "redirected", "Failed", timeout=120, CacheReady="DownloadFailed")
    message = condition(model, "CacheReady")["message"]
    assert "169.254.169.254" in message and "refused" in message and "link-local" in message, message
    assert "s3cr3t" not in message, "the refused URL's query stays out of status"
    assert model["status"]["lastFailure"]["exitCode"] == 2, "a refusal is permanent: the Job is not retried"
    jobs = list_objects(
        stack.api, f"/apis/batch/v1/namespaces/{stack.namespace}/jobs", "kubediffusion.io/model=redirected"
    )
    assert jobs[0]["status"].get("failed") == 1
