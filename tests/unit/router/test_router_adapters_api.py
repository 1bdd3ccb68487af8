"""LoRA adapters through the router: ``<model>:<adapter>`` goes to the model's pods as a name they answer
to, adapters the model lacks are refused before any pod (404 ``model_not_found``, as the pod would), the
model list shows them, a tenant gets a model's adapters with the model, and usage and metrics keep the
model's name."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubediffusion.api.multipart import parse_multipart
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from tests.unit.router.scaling import AWAKE, ZERO, FakeScaler, held, until
from tests.unit.router.tenancy import A_KEY, ADMIN_KEY, B_KEY, SDXL, TINY, bearer, tenants_file
from tests.unit.router.test_router_app import assert_envelope
from tests.unit.router.uploads import form, image_file

GEN = "/v1/images/generations"
TINY_POD = "http://127.0.9.1:8000"
STYLED = replace(TINY, adapters={"style-a": 1.0, "pixel": 0.5})  # tiny-sd, alias dall-e-2, default
MODELS = [STYLED, replace(SDXL, adapters={"turbo-lora": 0.8})]
UNKNOWN = ModelEntry(name="static", endpoints=("http://127.0.9.4:8000",))  # adapters not configured


def sent(pods: Any, index: int = -1) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(pods.requests[index].content)
    return payload


@pytest.mark.parametrize("asked", ["tiny-sd:style-a", "dall-e-2:style-a"])
async def test_the_pod_gets_the_adapter_under_the_models_own_name(router: Any, pods: Any, asked: str) -> None:
    async with router(MODELS) as client:
        response = await client.post(GEN, json={"prompt": "x", "model": asked, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    assert pods.hits(TINY_POD) == 1 and sent(pods)["model"] == "tiny-sd:style-a"


async def test_a_request_that_names_the_pods_own_adapter_name_goes_byte_for_byte(router: Any, pods: Any) -> None:
    body = b'{"prompt": "x",  "model": "tiny-sd:pixel", "response_format": "b64_json",'
    body += b' "adapters": [{"name": "style-a", "scale": 0.3}]}'
    async with router(MODELS) as client:
        response = await client.post(GEN, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and pods.requests[-1].content == body


@pytest.mark.parametrize("asked", ["tiny-sd:nope", "sdxl-turbo:style-a", "dall-e-2:turbo-lora", "nope:style-a"])
async def test_an_adapter_the_model_lacks_is_404_model_not_found_and_reaches_no_pod(
    router: Any, pods: Any, asked: str
) -> None:
    async with router(MODELS) as client:
        response = await client.post(GEN, json={"prompt": "x", "model": asked})
        by_id = await client.get(f"/v1/models/{asked}")
    for answer in (response, by_id):
        error = assert_envelope(answer, 404, "model_not_found")
        assert error["param"] == "model" and asked in error["message"]
    assert pods.hits() == 0


async def test_the_adapters_field_is_checked_against_the_models_adapters(router: Any, pods: Any) -> None:
    async with router(MODELS) as client:
        unknown = await client.post(GEN, json={"prompt": "x", "adapters": [{"name": "style-a"}, {"name": "nope"}]})
        twice = await client.post(GEN, json={"prompt": "x", "adapters": [{"name": "pixel"}, {"name": "pixel"}]})
        scale = await client.post(GEN, json={"prompt": "x", "adapters": [{"name": "pixel", "scale": 2.5}]})
        other_models = await client.post(
            GEN, json={"prompt": "x", "model": "sdxl-turbo", "adapters": [{"name": "style-a"}]}
        )
        assert pods.hits() == 0
        fine = await client.post(
            GEN, json={"prompt": "x", "model": "dall-e-2", "adapters": [{"name": "style-a"}, {"name": "pixel"}]}
        )
    error = assert_envelope(unknown, 404, "model_not_found")
    assert error["param"] == "adapters" and "'nope'" in error["message"]
    assert assert_envelope(twice, 400, "duplicate_adapter")["param"] == "adapters"
    assert assert_envelope(scale, 400)["param"].startswith("adapters")
    assert assert_envelope(other_models, 404, "model_not_found")["param"] == "adapters"
    assert fine.status_code == 200 and sent(pods)["model"] == "tiny-sd"
    assert sent(pods)["adapters"] == [{"name": "style-a"}, {"name": "pixel"}]


async def test_a_model_whose_adapters_the_router_does_not_know_leaves_them_to_its_pods(router: Any, pods: Any) -> None:
    async with router([UNKNOWN]) as client:
        named = await client.post(GEN, json={"prompt": "x", "model": "static:style-z"})
        listed = await client.post(GEN, json={"prompt": "x", "adapters": [{"name": "whatever"}]})
        malformed = await client.post(GEN, json={"prompt": "x", "model": "static:Bad.Name"})
    assert named.status_code == 200 and listed.status_code == 200
    assert [sent(pods, 0)["model"], sent(pods, 1)["adapters"]] == ["static:style-z", [{"name": "whatever"}]]
    assert_envelope(malformed, 404, "model_not_found")
    assert pods.hits() == 2


async def test_an_edit_form_names_the_adapter_and_lists_adapters_like_a_generation(router: Any, pods: Any) -> None:
    async with router(MODELS) as client:
        body, headers = form({"prompt": "a hat", "model": "dall-e-2:style-a"}, [image_file()])
        edited = await client.post("/v1/images/edits", content=body, headers=headers)
        body, headers = form({"model": "tiny-sd", "adapters": '[{"name": "nope"}]'}, [image_file()])
        refused = await client.post("/v1/images/variations", content=body, headers=headers)
        body, headers = form({"prompt": "a hat", "model": "tiny-sd:nope"}, [image_file()])
        unknown = await client.post("/v1/images/edits", content=body, headers=headers)
    assert edited.status_code == 200, edited.text
    parts = parse_multipart(pods.requests[0].content, pods.requests[0].headers["content-type"])
    assert next(part.data for part in parts if part.name == "model") == b"tiny-sd:style-a"
    assert assert_envelope(refused, 404, "model_not_found")["param"] == "adapters"
    assert assert_envelope(unknown, 404, "model_not_found")["param"] == "model"
    assert pods.hits() == 1


async def test_models_list_each_adapter_after_its_model(router: Any) -> None:
    async with router(MODELS) as client:
        listed = (await client.get("/v1/models")).json()["data"]
        one = (await client.get("/v1/models/dall-e-2:pixel")).json()
    assert [item["id"] for item in listed] == [
        "sdxl-turbo",
        "sdxl-turbo:turbo-lora",
        "tiny-sd",
        "tiny-sd:style-a",
        "tiny-sd:pixel",
    ]
    assert listed[2]["adapters"] == ["style-a", "pixel"]
    assert listed[4]["parent"] == "tiny-sd" and listed[4]["adapter"] == {"name": "pixel", "defaultScale": 0.5}
    assert one == listed[4]


async def test_a_tenant_gets_a_models_adapters_with_the_model_and_no_others(
    router: Any, pods: Any, tmp_path: Path
) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path)) as client:  # team-a: tiny-*, team-b: sdxl-*
        listed = {
            key: [m["id"] for m in (await client.get("/v1/models", headers=bearer(key))).json()["data"]]
            for key in (A_KEY, B_KEY)
        }
        ask = bearer(A_KEY)
        allowed = await client.post(GEN, json={"prompt": "x", "model": "dall-e-2:style-a"}, headers=ask)
        hidden = await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo:turbo-lora"}, headers=ask)
        missing = await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo2:turbo-lora"}, headers=ask)
        by_id = await client.get("/v1/models/sdxl-turbo:turbo-lora", headers=ask)
        admin = await client.get("/v1/models/sdxl-turbo:turbo-lora", headers=bearer(ADMIN_KEY))
    assert listed == {
        A_KEY: ["tiny-sd", "tiny-sd:style-a", "tiny-sd:pixel"],
        B_KEY: ["sdxl-turbo", "sdxl-turbo:turbo-lora"],
    }
    assert allowed.status_code == 200 and pods.hits() == 1
    assert hidden.status_code == missing.status_code == by_id.status_code == 404
    assert hidden.text.replace("sdxl-turbo:", "<m>:") == missing.text.replace("sdxl-turbo2:", "<m>:")
    assert admin.status_code == 200


def sample(client: Any, name: str, **labels: str) -> float:
    value = client.app.state.router.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


async def test_usage_and_metrics_count_an_adapter_request_as_its_model(router: Any, tmp_path: Path, pods: Any) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path, TENANTS_NO_QUOTA)) as client:
        for asked in ("tiny-sd:style-a", "dall-e-2:pixel", "tiny-sd:nope"):
            await client.post(GEN, json={"prompt": "x", "model": asked}, headers=bearer(A_KEY))
        usage = (await client.get("/v1/usage", headers=bearer(ADMIN_KEY))).json()["data"]
        requests = {
            code: sample(client, "kubediffusion_router_requests_total", model="tiny-sd", code=code)
            for code in ("200", "404")
        }
        labels = {
            sample.labels["model"]
            for metric in client.app.state.router.metrics.registry.collect()
            for sample in metric.samples
            if "model" in sample.labels
        }
    assert requests == {"200": 2.0, "404": 0.0}  # a 404 names no model we know: "unknown"
    assert [(row["model"], row["images"]) for row in usage] == [("tiny-sd", 2)]
    assert not any(":" in label for label in labels)


TENANTS_NO_QUOTA = """
tenants:
  - name: team-a
    keys: ["sk-team-a-plain"]
    models: ["tiny-*"]
  - name: ops
    keys: ["sk-ops-admin"]
    admin: true
"""


async def test_an_adapter_request_for_a_model_at_zero_wakes_and_waits_for_the_model(router: Any, pods: Any) -> None:
    zero = replace(ZERO, adapters={"style-a": 1.0})
    discovery, scaler = StaticDiscovery(table=RoutingTable([zero])), FakeScaler()
    async with router(discovery=discovery, scaler=scaler) as client:
        call = asyncio.create_task(client.post(GEN, json={"prompt": "x", "model": "elastic:style-a"}))
        await until(lambda: held(client.app, zero) == 1, message="the request held")
        assert scaler.patches == [("ns", "elastic")]
        discovery.set_table(RoutingTable([replace(AWAKE, adapters={"style-a": 1.0})]))
        answer: httpx.Response = await asyncio.wait_for(call, 5)
    assert answer.status_code == 200 and sent(pods)["model"] == "elastic:style-a"
