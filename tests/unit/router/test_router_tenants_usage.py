"""Usage per tenant and model: the Prometheus counters and GET /v1/usage add up to what was delivered
(images, megapixels, steps, the compute seconds pods report), failed requests counted apart and never
billed; /v1/usage is for admins, with a documented shape and 400s for bad parameters."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.api.computetime import compute_seconds
from kubediffusion.api.limits import GenerationDefaults
from tests.unit.router.conftest import PNG
from tests.unit.router.streams import completed, partial
from tests.unit.router.tenancy import (
    A_KEY,
    ADMIN_KEY,
    B_KEY,
    MODELS,
    TENANTS,
    WallClock,
    bearer,
    tenants_file,
    write_file,
)

GEN = "/v1/images/generations"
TINY_POD, SDXL_POD = "http://127.0.9.1:8000", "http://127.0.9.2:8000"
NO_QUOTA = TENANTS.replace("    quota: {imagesPerDay: 2}\n", "").replace("rateLimit: {rps: 1, burst: 2}", "")
B64 = base64.b64encode(PNG).decode()


def with_compute(seconds: str, pods: Any) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        ok = pods.ok(request)
        return httpx.Response(200, json=ok.json(), headers={"X-KubeDiffusion-Compute-Seconds": seconds})

    return answer


def sample(client: Any, name: str, **labels: str) -> float:
    value = client.app.state.router.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def test_counters_and_usage_add_up_to_what_was_delivered_failed_requests_apart(
    router: Any, tmp_path: Path, pods: Any
) -> None:
    pods.behaviour[TINY_POD] = with_compute("1.5", pods)
    pods.behaviour[SDXL_POD] = with_compute("0.25", pods)
    async with router(MODELS, tenants_file=tenants_file(tmp_path, NO_QUOTA), wall_clock=WallClock()) as client:
        a = await client.post(GEN, json={"prompt": "x", "size": "512x512", "n": 1}, headers=bearer(A_KEY))
        a_steps = await client.post(
            GEN, json={"prompt": "x", "size": "256x256", "num_inference_steps": 3}, headers=bearer(A_KEY)
        )
        b = await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo", "n": 2}, headers=bearer(B_KEY))
        pods.behaviour[SDXL_POD] = lambda request: httpx.Response(500, json={"error": {"message": "boom"}})
        b_failed = await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo"}, headers=bearer(B_KEY))
        b_invalid = await client.post(
            GEN, json={"prompt": "x", "model": "sdxl-turbo", "size": "4096x4096"}, headers=bearer(B_KEY)
        )
        usage = await client.get("/v1/usage", headers=bearer(ADMIN_KEY))
        counters = {
            name: (
                sample(client, f"kubediffusion_router_usage_{name}_total", tenant="team-a", model="tiny-sd"),
                sample(client, f"kubediffusion_router_usage_{name}_total", tenant="team-b", model="sdxl-turbo"),
            )
            for name in ("requests", "images", "megapixels", "denoising_steps", "gpu_seconds")
        }
        failed = {
            code: sample(
                client,
                "kubediffusion_router_usage_failed_requests_total",
                tenant="team-b",
                model="sdxl-turbo",
                code=code,
            )
            for code in ("500", "400")
        }
    assert [r.status_code for r in (a, a_steps, b, b_failed, b_invalid)] == [200, 200, 200, 500, 400]
    steps = GenerationDefaults().steps
    width, height = GenerationDefaults().width_height
    b_megapixels = 2 * width * height / 1e6
    assert counters["requests"] == (2, 1) and counters["images"] == (2, 2)
    assert counters["megapixels"] == pytest.approx((0.262144 + 0.065536, b_megapixels))
    assert counters["denoising_steps"] == (steps + 3, 2 * steps)
    assert counters["gpu_seconds"] == pytest.approx((3.0, 0.25))
    assert failed == {"500": 1, "400": 1}  # counted apart, never billed
    body = usage.json()
    assert body["object"] == "usage" and body["scope"] == "replica"
    assert (body["from"], body["to"], body["tenant"]) == ("2024-04-01", "2024-05-01", None)  # 31 days to today
    assert body["data"] == [
        {"date": "2024-05-01", "tenant": "team-a", "model": "tiny-sd", "requests": 2, "images": 2,
         "failed_requests": 0, "megapixels": pytest.approx(0.32768), "denoising_steps": steps + 3,
         "gpu_seconds": 3.0},
        {"date": "2024-05-01", "tenant": "team-b", "model": "sdxl-turbo", "requests": 1, "images": 2,
         "failed_requests": 1, "megapixels": pytest.approx(b_megapixels), "denoising_steps": 2 * steps,
         "gpu_seconds": 0.25},
    ]  # fmt: skip
    assert [t["tenant"] for t in body["totals"]] == ["team-a", "team-b"]
    assert body["totals"][1]["images"] == 2 and body["totals"][1]["failed_requests"] == 1


async def test_a_stream_pays_for_the_images_it_completed_and_its_compute_comment_stays_home(
    router: Any, tmp_path: Path, pods: Any
) -> None:
    events = (
        partial(0)
        + completed(B64)
        + b": x-kubediffusion-compute-seconds 2.5\n\n"
        + completed(B64)
        + b'event: error\ndata: {"error": {"message": "gone"}}\n\n'
    )
    pods.behaviour[TINY_POD] = lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=events
    )
    async with router(MODELS, tenants_file=tenants_file(tmp_path, NO_QUOTA), wall_clock=WallClock()) as client:
        answer = await client.post(GEN, json={"prompt": "x", "n": 3, "stream": True}, headers=bearer(A_KEY))
        usage = (await client.get("/v1/usage", headers=bearer(ADMIN_KEY))).json()
    assert answer.status_code == 200 and answer.text.count("event: image_generation.completed") == 2
    assert "compute-seconds" not in answer.text
    row = usage["data"][0]
    assert (row["requests"], row["images"], row["gpu_seconds"], row["failed_requests"]) == (1, 2, 2.5, 0)


async def test_a_stream_that_completes_nothing_is_refunded(router: Any, tmp_path: Path, pods: Any) -> None:
    pods.behaviour[TINY_POD] = lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=partial(0)
    )
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        answer = await client.post(GEN, json={"prompt": "x", "n": 2, "stream": True}, headers=bearer(A_KEY))
        usage = (await client.get("/v1/usage", headers=bearer(ADMIN_KEY))).json()
        del pods.behaviour[TINY_POD]
        after = await client.post(GEN, json={"prompt": "x", "n": 2}, headers=bearer(A_KEY))  # quota 2: all back
    assert answer.status_code == 200
    row = usage["data"][0]
    assert (row["requests"], row["images"], row["failed_requests"]) == (0, 0, 1)
    assert after.status_code == 200


async def test_usage_is_for_admins_and_checks_its_parameters(router: Any, tmp_path: Path) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path), wall_clock=WallClock()) as client:
        await client.post(GEN, json={"prompt": "x"}, headers=bearer(A_KEY))
        tenant_a = await client.get("/v1/usage", headers=bearer(A_KEY))
        nobody = await client.get("/v1/usage")
        bad = {
            query: await client.get(f"/v1/usage?{query}", headers=bearer(ADMIN_KEY))
            for query in ("from=2024-13-01", "to=yesterday", "from=2024-05-02&to=2024-05-01", f"tenant={'t' * 64}")
        }
        one = (await client.get("/v1/usage?tenant=team-b&from=2024-05-01", headers=bearer(ADMIN_KEY))).json()
        window = (await client.get("/v1/usage?from=2024-04-01&to=2024-04-30", headers=bearer(ADMIN_KEY))).json()
    assert tenant_a.status_code == 403 and tenant_a.json()["error"]["code"] == "permission_denied"
    assert nobody.status_code == 401
    for query, answer in bad.items():
        assert answer.status_code == 400, query
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert bad["from=2024-13-01"].json()["error"]["param"] == "from"
    assert bad["to=yesterday"].json()["error"]["param"] == "to"
    assert one["tenant"] == "team-b" and one["data"] == [] and one["from"] == one["to"] == "2024-05-01"
    assert window["data"] == []


async def test_with_the_key_file_alone_nobody_is_admin_and_with_auth_off_usage_is_open(
    router: Any, tmp_path: Path
) -> None:
    keys = write_file(tmp_path / "keys", "sk-one\n")
    async with router(MODELS, api_keys_file=keys) as client:
        refused = await client.get("/v1/usage", headers=bearer("sk-one"))
    async with router(MODELS, wall_clock=WallClock()) as client:
        await client.post(GEN, json={"prompt": "x"})
        open_usage = (await client.get("/v1/usage")).json()
    assert refused.status_code == 403
    assert open_usage["data"][0]["tenant"] == "anonymous" and open_usage["data"][0]["images"] == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 0.0), ("1.234", 1.234), (" 2 ", 2.0), ("-1", 0.0), ("nan", 0.0), ("inf", 0.0), ("1e9", 0.0), ("x", 0.0)],
)
def test_compute_seconds_header_is_read_defensively(header: str | None, seconds: float) -> None:
    assert compute_seconds(header) == seconds
