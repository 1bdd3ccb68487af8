"""LoRA adapters end to end on real processes: a tiny SD model server with a random LoRA behind the router
(static discovery naming the adapter). The router sends ``<alias>:<adapter>`` on as a name the pod answers
to (the pod applies the adapter: another image for the same seed), refuses what the model lacks itself,
and lists the adapter as the pod does."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS
from kubediffusion.local import LOOPBACK, free_port, start_inference, static_config
from kubediffusion.tinymodel import write_tiny_lora
from tests.router.stack import ALIAS, MODEL, Pod, Stack, start_router_for, stop_stack


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("adapters")
    lora = write_tiny_lora(workdir, "style-a")
    port = free_port()
    adapters = json.dumps([{"name": "style-a", "path": str(lora), "defaultScale": 1.0}])
    process = start_inference(
        tiny_model,
        MODEL,
        port,
        defaults=TINY_DEFAULTS,
        limits=TINY_LIMITS,
        extra_args=["--aliases", ALIAS],
        env={"KD_INFERENCE_ADAPTERS": adapters},
    )
    pod = Pod(process, f"http://{LOOPBACK}:{port}")
    models = yaml.safe_load(
        static_config(MODEL, [pod.url], defaults=TINY_DEFAULTS, limits=TINY_LIMITS, aliases=[ALIAS])
    )
    models[0]["adapters"] = [{"name": "style-a", "defaultScale": 1.0}]
    config = workdir / "models.yaml"
    config.write_text(yaml.safe_dump(models))
    started = start_router_for([pod], config, workdir)
    yield started
    stop_stack(started)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


def generate(stack: Stack, **fields: Any) -> Answer:
    payload = {"prompt": "a lighthouse", "seed": 7, "num_inference_steps": 2, "response_format": "b64_json"}
    response = httpx.post(f"{stack.url}/v1/images/generations", json={**payload, **fields}, timeout=120)
    return Answer(response.status_code, response.json())


def image(answer: Answer) -> bytes:
    assert answer.status == 200, answer.body
    return base64.b64decode(answer.body["data"][0]["b64_json"])


def test_an_adapter_named_through_the_alias_reaches_the_pod_which_applies_it(stack: Stack) -> None:
    base = image(generate(stack, model=ALIAS))
    styled = image(generate(stack, model=f"{ALIAS}:style-a"))
    listed = image(generate(stack, model=MODEL, adapters=[{"name": "style-a"}]))
    assert styled != base and listed == styled


def test_an_unknown_adapter_is_refused_by_the_router_before_the_pod(stack: Stack) -> None:
    before = stack.pods[0].request_count()
    named = generate(stack, model=f"{MODEL}:nope")
    listed = generate(stack, model=MODEL, adapters=[{"name": "nope"}])
    assert (named.status, named.body["error"]["code"], named.body["error"]["param"]) == (
        404,
        "model_not_found",
        "model",
    )
    assert (listed.status, listed.body["error"]["param"]) == (404, "adapters")
    assert stack.pods[0].request_count() == before


def test_the_router_lists_the_adapter_as_its_pod_does(stack: Stack) -> None:
    routed = httpx.get(f"{stack.url}/v1/models", timeout=10).json()["data"]
    served = httpx.get(f"{stack.pods[0].url}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in routed] == [m["id"] for m in served] == [MODEL, f"{MODEL}:style-a"]
    for key in ("parent", "adapter"):
        assert routed[1][key] == served[1][key]
    assert routed[0]["adapters"] == served[0]["adapters"] == ["style-a"]
