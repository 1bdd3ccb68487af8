"""LoRA adapters end to end: ``spec.adapters`` from http URLs, picked with the official openai client.

One stack for the module: the tiny model with two adapters, random tiny LoRAs served on 127.0.0.1 (the
e2e operator allows http from there: tests/e2e/conftest.py): ``style-a`` in a .tar.gz, ``style-b`` a
single .safetensors file with ``defaultScale`` 0.5. The cache Job fetches the model, then each adapter
(one fetch-model container after the other, into ``<copy>/adapters/<name>``), the model pod loads them
from ``KD_INFERENCE_ADAPTERS``, and the router answers ``tiny:style-a`` (docs/pipelines.md).
"""

from __future__ import annotations

import http.server
import json
import tarfile
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
from kubernetes import client

from kubediffusion.tinymodel import write_tiny_lora
from tests.cluster.operator_fixture import condition, get_model, list_objects
from tests.e2e.stack import E2EStack, decode_image

pytestmark = pytest.mark.e2e

TINY = "tiny"
ADAPTER = "style-a"  # a .tar.gz holding pytorch_lora_weights.safetensors
SINGLE = "style-b"  # one .safetensors file, as LoRAs are published, at half its strength by default
LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two tiny LoRAs (``style-a.tar.gz``, ``style-b.safetensors``) behind a throwaway HTTP server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("lora")
    with tarfile.open(root / f"{ADAPTER}.tar.gz", "w:gz") as tar:
        tar.add(write_tiny_lora(root / "written", ADAPTER) / LORA_FILE, arcname=LORA_FILE)
    (write_tiny_lora(root / "written", SINGLE) / LORA_FILE).rename(root / f"{SINGLE}.safetensors")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack, lora_server: str) -> E2EStack:
    adapters = [
        {"name": ADAPTER, "source": {"url": f"{lora_server}/{ADAPTER}.tar.gz"}},
        {"name": SINGLE, "source": {"url": f"{lora_server}/{SINGLE}.safetensors"}, "defaultScale": 0.5},
    ]
    e2e_stack.apply_model(TINY, {"source": {"tiny": {}}, "adapters": adapters})
    e2e_stack.wait_ready(TINY)
    return e2e_stack


def _generate(stack: E2EStack, model: str, **extra: object) -> str:
    result = stack.client().images.generate(
        model=model,
        prompt="a lighthouse at dawn",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 1, **extra},
    )
    b64 = result.data[0].b64_json or ""
    assert decode_image(b64).size == (64, 64)
    return b64


def test_the_cache_job_fetches_each_adapter_after_the_model_and_status_shows_them(stack: E2EStack) -> None:
    model = get_model(stack.api, stack.namespace, TINY)
    assert model is not None and condition(model, "CacheReady")["status"] == "True"
    cache = model["status"]["cache"]
    assert set(cache["extras"]) == {f"adapters/{ADAPTER}", f"adapters/{SINGLE}"}
    assert all(revision.startswith("sha256:") for revision in cache["extras"].values()), cache
    assert cache["extras"][f"adapters/{ADAPTER}"] != cache["extras"][f"adapters/{SINGLE}"]
    jobs = list_objects(
        stack.api, f"/apis/batch/v1/namespaces/{stack.namespace}/jobs", f"kubediffusion.io/model={TINY}"
    )
    assert [j["status"].get("succeeded") for j in jobs] == [1]
    pod_spec = jobs[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch", "adapter-0"]
    assert [c["name"] for c in pod_spec["containers"]] == ["adapter-1"]
    # The pod runner's claim directory is the "PVC": the adapters' weights sit inside the model's copy.
    copy = stack.runner.volume_root / stack.namespace / cache["claimName"] / cache["path"].removeprefix("/models/")
    assert (copy / "model_index.json").is_file()
    assert (copy / "adapters" / ADAPTER / LORA_FILE).is_file()
    assert [p.name for p in (copy / "adapters" / SINGLE).glob("*.safetensors")] == [f"{SINGLE}.safetensors"]


def test_the_model_pod_loads_the_adapters_and_lists_them(stack: E2EStack) -> None:
    pods = client.CoreV1Api(stack.api).list_namespaced_pod(
        stack.namespace, label_selector=f"kubediffusion.io/model={TINY},app.kubernetes.io/component=inference"
    )
    (pod,) = pods.items
    env = {var.name: var.value for var in pod.spec.containers[0].env or []}
    configured = {a["name"]: a for a in json.loads(env["KD_INFERENCE_ADAPTERS"])}
    assert set(configured) == {ADAPTER, SINGLE}
    assert configured[ADAPTER]["path"].endswith(f"/adapters/{ADAPTER}")
    assert configured[SINGLE]["path"].endswith(f"/adapters/{SINGLE}")
    (ip,) = stack.pod_ips(TINY)
    served = {m["id"] for m in httpx.get(f"http://{ip}:8000/v1/models", timeout=10).json()["data"]}
    assert {f"{TINY}:{ADAPTER}", f"{TINY}:{SINGLE}"} <= served


def test_the_router_lists_the_adapters_as_models(stack: E2EStack) -> None:
    ids = {m.id for m in stack.client().models.list().data}
    assert ids == {TINY, f"{TINY}:{ADAPTER}", f"{TINY}:{SINGLE}"}
    listed = stack.models()
    assert listed[TINY]["adapters"] == [ADAPTER, SINGLE]
    assert listed[f"{TINY}:{ADAPTER}"]["parent"] == TINY
    assert listed[f"{TINY}:{ADAPTER}"]["adapter"] == {"name": ADAPTER, "defaultScale": 1.0}
    assert listed[f"{TINY}:{SINGLE}"]["adapter"] == {"name": SINGLE, "defaultScale": 0.5}


def test_model_colon_adapter_changes_the_image_as_the_adapters_field_does(stack: E2EStack) -> None:
    with_adapter = _generate(stack, f"{TINY}:{ADAPTER}")
    plain = _generate(stack, TINY)
    assert with_adapter != plain, "the LoRA changes the image"
    assert _generate(stack, TINY, adapters=[{"name": ADAPTER}]) == with_adapter
    assert _generate(stack, TINY) == plain, "the adapter is off again for the next request"


def test_a_single_file_adapter_serves_at_its_default_scale(stack: E2EStack) -> None:
    at_default = _generate(stack, f"{TINY}:{SINGLE}")
    assert at_default not in {_generate(stack, TINY), _generate(stack, f"{TINY}:{ADAPTER}")}
    assert _generate(stack, TINY, adapters=[{"name": SINGLE, "scale": 0.5}]) == at_default
    assert _generate(stack, TINY, adapters=[{"name": SINGLE, "scale": 1.0}]) != at_default


def test_an_unknown_adapter_is_404_model_not_found(stack: E2EStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client(max_retries=0).images.generate(model=f"{TINY}:nope", prompt="x", size="64x64")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        stack.client(max_retries=0).images.generate(
            model=TINY, prompt="x", size="64x64", extra_body={"adapters": [{"name": "nope"}]}
        )
    assert caught.value.code == "model_not_found" and caught.value.param == "adapters"
