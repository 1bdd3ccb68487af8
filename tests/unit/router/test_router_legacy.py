"""The older service API on the router (``/imagine/*``): the bodies and answers its clients know, and
its ``{"detail": "..."}`` errors (FastAPI's shape, not OpenAI's envelope)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits
from kubediffusion.router.kube_discovery import model_entry
from kubediffusion.router.routing import ModelEntry
from tests.unit.router.conftest import PNG
from tests.unit.router.test_router_app import A, B

GIB = 1024**3
TURBO_DEFAULTS = GenerationDefaults(steps=1, guidance=0.0, size="512x512")
TURBO_LIMITS = GenerationLimits(min_size=512, max_size=1024, max_steps=4)


def turbo(endpoints: tuple[str, ...] = (A,), **kwargs: Any) -> ModelEntry:
    return ModelEntry(
        name="sdxl-turbo", endpoints=endpoints, default=True, defaults=TURBO_DEFAULTS, limits=TURBO_LIMITS, **kwargs
    )


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


async def test_generate_answers_the_png_of_the_default_model(router: Any, pods: Any) -> None:
    async with router([turbo(), ModelEntry(name="other", endpoints=(B,))]) as client:
        response = await client.post("/imagine/generate", json={"prompt": "a lighthouse at dawn"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == PNG
    assert str(pods.requests[0].url) == A + "/v1/images/generations"
    assert json.loads(pods.requests[0].content) == {
        "prompt": "a lighthouse at dawn",
        "model": "sdxl-turbo",
        "n": 1,
        "response_format": "b64_json",
    }


async def test_generate_passes_size_guidance_and_steps_on(router: Any, pods: Any) -> None:
    body = {"prompt": "a cat", "img_size": 768, "guidance_scale": 0.5, "num_inference_steps": 4}
    async with router([turbo()]) as client:
        response = await client.post("/imagine/generate", json=body)
    assert response.status_code == 200
    sent = json.loads(pods.requests[0].content)
    assert sent["size"] == "768x768" and sent["guidance_scale"] == 0.5 and sent["num_inference_steps"] == 4


async def test_generate_reads_values_as_fastapi_did_and_ignores_unknown_fields(router: Any, pods: Any) -> None:
    body = {"prompt": "a cat", "img_size": "512", "num_inference_steps": "2", "negative_prompt": "x", "seed": 3}
    async with router([turbo()]) as client:
        response = await client.post("/imagine/generate", json=body)
    assert response.status_code == 200
    sent = json.loads(pods.requests[0].content)
    assert sent["size"] == "512x512" and sent["num_inference_steps"] == 2 and "seed" not in sent


@pytest.mark.parametrize(
    "body",
    [
        b'{"img_size": 512}',  # no prompt
        b'{"prompt": ""}',
        b'{"prompt": "x", "img_size": 2048}',  # above max_img_size
        b'{"prompt": "x", "img_size": 256}',  # below min_img_size
        b'{"prompt": "x", "img_size": "big"}',
        b'{"prompt": "x", "num_inference_steps": 5}',  # above the model's maxSteps
        b'{"prompt": "x", "guidance_scale": -1}',
        b"{not json",
        b"[1, 2]",
    ],
)
async def test_bad_generate_requests_are_422_details_and_reach_no_pod(router: Any, pods: Any, body: bytes) -> None:
    async with router([turbo()]) as client:
        response = await client.post("/imagine/generate", content=body, headers={"content-type": "application/json"})
    detail(response, 422)
    assert pods.hits() == 0


async def test_generate_without_a_default_model_or_ready_pod_is_a_503_detail(router: Any) -> None:
    async with router([ModelEntry(name="a"), ModelEntry(name="b")]) as client:
        no_default = await client.post("/imagine/generate", json={"prompt": "x"})
    async with router([turbo(endpoints=())]) as client:
        no_pod = await client.post("/imagine/generate", json={"prompt": "x"})
    detail(no_default, 503)
    assert "no ready replica" in detail(no_pod, 503) and no_pod.headers["retry-after"]


async def test_a_pods_errors_become_details_with_their_status(router: Any, pods: Any) -> None:
    busy = {"error": {"message": "queue full", "type": "rate_limit_error", "param": None, "code": "queue_full"}}
    pods.behaviour[A] = lambda r: httpx.Response(429, json=busy, headers={"Retry-After": "3"})
    async with router([turbo()]) as client:
        busy_answer = await client.post("/imagine/generate", json={"prompt": "x"})
        pods.behaviour[A] = lambda r: httpx.Response(400, json={"error": {"message": "bad prompt"}})
        refused = await client.post("/imagine/generate", json={"prompt": "x"})
    assert detail(busy_answer, 429) == "queue full" and busy_answer.headers["retry-after"] == "3"
    assert detail(refused, 422) == "bad prompt"


async def test_keys_and_rate_limits_apply_with_detail_errors(router: Any, pods: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-1\n")
    right = {"Authorization": "Bearer sk-1"}
    async with router([turbo()], api_keys_file=keys, rate_limit_rps=1, rate_limit_burst=1) as client:
        missing = await client.post("/imagine/generate", json={"prompt": "x"})
        first = await client.post("/imagine/generate", json={"prompt": "x"}, headers=right)
        limited = await client.post("/imagine/generate", json={"prompt": "x"}, headers=right)
        info = await client.get("/imagine/info")
        health = await client.get("/imagine/health")
    detail(missing, 401)
    assert first.status_code == 200
    detail(limited, 429)
    assert limited.headers["retry-after"]
    detail(info, 401)
    assert health.status_code == 200  # a probe: open


async def test_unknown_paths_and_methods_under_imagine_are_fastapis_details(router: Any) -> None:
    async with router([turbo()]) as client:
        missing = await client.get("/imagine/nope")
        wrong_method = await client.get("/imagine/generate")
        elsewhere = await client.get("/v1/nope")
    assert detail(missing, 404) == "Not Found"
    assert detail(wrong_method, 405) == "Method Not Allowed"
    assert set(elsewhere.json()) == {"error"}


async def test_health_is_healthy_with_a_ready_pod_and_degraded_without(router: Any) -> None:
    async with router([turbo()]) as client:
        healthy = await client.get("/imagine/health")
    async with router([turbo(endpoints=())]) as client:
        degraded = await client.get("/imagine/health")
    async with router([]) as client:
        nothing = await client.get("/imagine/health")
    assert healthy.status_code == 200 and healthy.json() == {"status": "healthy"}
    assert degraded.status_code == 200 and degraded.json() == {"status": "degraded"}
    assert nothing.json() == {"status": "degraded"}


def pod_info(phase: str = "ready", error: str | None = None, vram: bool = True) -> dict[str, Any]:
    """What the inference server's GET /info answers (the fields the router reads)."""
    return {
        "model": {"id": "sdxl-turbo"},
        "phase": phase,
        "error": error,
        "system": {
            "cpuPercent": 20.0 if phase == "ready" else 40.0,
            "cpuCount": 8,
            "ramTotalBytes": 16 * GIB,
            "ramAvailableBytes": 6 * GIB,
            "vramTotalBytes": 24 * GIB if vram else None,
            "vramFreeBytes": 18 * GIB if vram else None,
        },
    }


async def test_info_gathers_the_default_models_pods(router: Any, pods: Any) -> None:
    pods.behaviour[A] = lambda r: httpx.Response(200, json=pod_info())
    pods.behaviour[B] = lambda r: httpx.Response(200, json=pod_info("loading"))
    async with router([turbo(endpoints=(A, B))]) as client:
        response = await client.get("/imagine/info")
    assert {str(r.url) for r in pods.requests} == {f"{A}/info", f"{B}/info"}
    assert response.status_code == 200
    assert response.json() == {
        "model": "sdxl-turbo",
        "is_loaded": True,
        "error": None,
        "config": {
            "default_steps": 1,
            "default_guidance": 0.0,
            "min_img_size": 512,
            "max_img_size": 1024,
            "default": 512,
        },
        "system_info": {
            "cpu_usage": 30.0,
            "available_memory": 12.0,
            "total_memory": 32.0,
            "total_vram": 48.0,
            "available_vram": 36.0,
            "vram_usage": 25.0,
        },
    }


async def test_info_reports_an_unloaded_model_and_the_pods_error(router: Any, pods: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pods.behaviour[A] = lambda r: httpx.Response(200, json=pod_info("failed", error="CUDA out of memory", vram=False))
    pods.behaviour[B] = refuse
    async with router([turbo(endpoints=(A, B))]) as client:
        failed = (await client.get("/imagine/info")).json()
    async with router([turbo(endpoints=())]) as client:
        no_pods = (await client.get("/imagine/info")).json()
    assert failed["is_loaded"] is False and failed["error"] == "CUDA out of memory"
    assert failed["system_info"]["total_vram"] is None and failed["system_info"]["vram_usage"] is None
    assert failed["system_info"]["total_memory"] == 16.0  # only the pod that answered
    assert no_pods["is_loaded"] is False and "no ready replica" in no_pods["error"]
    assert set(no_pods["system_info"]) == {
        "cpu_usage", "available_memory", "total_memory", "total_vram", "available_vram", "vram_usage"
    }  # fmt: skip


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize(
    ("example", "config"),
    [
        ("sdxl-turbo", {"default_steps": 1, "default_guidance": 0.0, "min_img_size": 512, "max_img_size": 1024}),
        ("sdxl-base", {"default_steps": 20, "default_guidance": 7.5, "min_img_size": 512, "max_img_size": 1024}),
    ],
)
async def test_the_examples_ship_the_older_apis_defaults_table(
    router: Any, pods: Any, example: str, config: dict[str, Any]
) -> None:
    manifest = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    manifest["metadata"]["namespace"] = "default"
    entry = model_entry(manifest, (A,))
    assert entry is not None
    pods.behaviour[A] = lambda r: httpx.Response(200, json=pod_info())
    async with router([replace(entry, default=True)]) as client:
        info = (await client.get("/imagine/info")).json()
    assert {key: info["config"][key] for key in config} == config
