"""A user's first day: kubectl apply two ImageModels, get images through the router with the openai SDK.

One stack for the module (namespace, operator, router): a tiny-source model and one whose weights come
from an http archive served on 127.0.0.1. Tests run in file order; the last one deletes a model.
"""

from __future__ import annotations

import base64
import http.server
import tarfile
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from kubediffusion.tinymodel import write_tiny_pipeline
from tests.cluster.operator_fixture import condition, delete_model, get_model, list_objects
from tests.e2e.stack import E2EStack, decode_image
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TINY = "tiny"
ARCHIVE = "archived"


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tarball of the tiny pipeline behind a throwaway HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("archive")
    write_tiny_pipeline(root / "tiny-sd")
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        tar.add(root / "tiny-sd", arcname="tiny-sd")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.tar.gz"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack, archive_url: str) -> E2EStack:
    e2e_stack.apply_model(TINY, {"source": {"tiny": {}}, "aliases": ["dall-e-2"], "default": True})
    e2e_stack.apply_model(ARCHIVE, {"source": {"url": archive_url}, "aliases": ["noise"]})
    e2e_stack.wait_ready(TINY)
    e2e_stack.wait_ready(ARCHIVE)
    return e2e_stack


def test_apply_creates_children_and_status_reaches_ready(stack: E2EStack) -> None:
    model = get_model(stack.api, stack.namespace, TINY)
    assert model is not None
    status = model["status"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://im-{TINY}.{stack.namespace}.svc:8000"
    assert condition(model, "CacheReady")["status"] == "True"
    # The cache Job really ran fetch-model: the "PVC" holds a pipeline and its completion marker.
    archived = get_model(stack.api, stack.namespace, ARCHIVE)
    assert archived is not None and archived["status"]["cache"]["revision"].startswith("sha256:")
    jobs = list_objects(stack.api, f"/apis/batch/v1/namespaces/{stack.namespace}/jobs")
    assert {j["metadata"]["name"] for j in jobs} == {f"im-{TINY}-cache", f"im-{ARCHIVE}-cache"}
    assert all(j["status"].get("succeeded") == 1 for j in jobs)


def test_router_lists_both_models_with_aliases(stack: E2EStack) -> None:
    models = stack.client().models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {TINY, ARCHIVE}
    listed = stack.models()
    assert listed[TINY]["aliases"] == ["dall-e-2"] and listed[TINY]["default"] is True
    assert listed[ARCHIVE]["aliases"] == ["noise"] and listed[ARCHIVE]["readyReplicas"] == 1


def test_openai_client_generates_b64_images(stack: E2EStack) -> None:
    result = stack.client().images.generate(
        model=TINY,
        prompt="a lighthouse at dawn",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 7, "num_inference_steps": 2},
    )
    assert len(result.data) == 2
    images = [decode_image(item.b64_json or "") for item in result.data]
    assert all(image.size == (64, 64) and image.format == "PNG" for image in images)
    assert result.data[0].b64_json != result.data[1].b64_json  # n=2 gives two different images


def test_openai_client_gets_signed_urls_that_serve_the_images(stack: E2EStack) -> None:
    result = stack.client().images.generate(
        model=ARCHIVE,
        prompt="a fox",
        n=2,
        size="64x64",
        response_format="url",
        extra_body={"seed": 3},
    )
    assert len(result.data) == 2
    for item in result.data:
        assert item.url is not None and item.url.startswith(stack.router.url)
        response = httpx.get(item.url, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert decode_image(base64.b64encode(response.content).decode()).size == (64, 64)
        tampered = item.url.replace("sig=", "sig=0")
        assert httpx.get(tampered, timeout=10).status_code == 403


@pytest.mark.parametrize("name", [TINY, "dall-e-2", None, ARCHIVE, "noise"])
def test_requests_route_by_name_alias_and_default(stack: E2EStack, name: str | None) -> None:
    expected = ARCHIVE if name in (ARCHIVE, "noise") else TINY
    counts = {ip: stack.pod_request_count(ip) for model in (TINY, ARCHIVE) for ip in stack.pod_ips(model)}
    kwargs = {"model": name} if name is not None else {}
    result = stack.client().images.generate(prompt="x", size="64x64", response_format="b64_json", **kwargs)
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)
    moved = {ip for ip, before in counts.items() if stack.pod_request_count(ip) > before}
    assert moved == set(stack.pod_ips(expected))


def test_same_seed_same_bytes_through_the_whole_stack(stack: E2EStack) -> None:
    def once() -> str:
        result = stack.client().images.generate(
            model=TINY, prompt="seeded", size="64x64", response_format="b64_json", extra_body={"seed": 1234}
        )
        return result.data[0].b64_json or ""

    assert once() == once()


def test_unknown_model_is_404_model_not_found(stack: E2EStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client(max_retries=0).images.generate(model="no-such-model", prompt="x")
    assert caught.value.code == "model_not_found"


def test_deleted_model_disappears_from_the_router_and_answers_404(stack: E2EStack) -> None:
    delete_model(stack.api, stack.namespace, ARCHIVE)
    wait_for(
        lambda: ARCHIVE not in stack.models(),
        timeout=15,
        interval=0.2,
        message="router stops listing the deleted model",
    )
    with pytest.raises(openai.NotFoundError):
        stack.client(max_retries=0).images.generate(model=ARCHIVE, prompt="x")
    with pytest.raises(openai.NotFoundError):
        stack.client(max_retries=0).images.generate(model="noise", prompt="x")
    # The other model is untouched.
    result = stack.client().images.generate(prompt="still here", size="64x64", response_format="b64_json")
    assert decode_image(result.data[0].b64_json or "").size == (64, 64)
