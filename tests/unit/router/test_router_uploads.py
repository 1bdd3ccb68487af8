"""Edits and variations through the router: validated once, the client's bytes forwarded, the same
retry rules as generations."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kubediffusion.api.limits import GenerationLimits
from kubediffusion.api.multipart import parse_multipart
from kubediffusion.router.modelinfo import from_repo
from kubediffusion.router.routing import ModelEntry
from tests.unit.router.test_router_app import A, B, assert_envelope
from tests.unit.router.uploads import form, image_file, jpeg, png

LIMITS = GenerationLimits(min_size=8, max_size=512, max_n=4, max_steps=10)


def entry(name: str = "tiny", endpoints: tuple[str, ...] = (A,), **kwargs: Any) -> ModelEntry:
    return ModelEntry(name=name, endpoints=endpoints, limits=LIMITS, **kwargs)


def parts_of(request: httpx.Request) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for part in parse_multipart(request.content, request.headers["content-type"]):
        found.setdefault(part.name, []).append(part.data)
    return found


async def test_edit_form_is_forwarded_byte_for_byte_with_its_content_type(router: Any, pods: Any) -> None:
    body, headers = form({"prompt": "a hat", "model": "tiny", "n": 2}, [image_file(png(32, 32, alpha=True))])
    async with router([entry()]) as client:
        response = await client.post("/v1/images/edits", content=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = pods.requests[0]
    assert str(sent.url) == A + "/v1/images/edits"
    assert sent.content == body and sent.headers["content-type"] == headers["content-type"]
    assert "authorization" not in sent.headers
    data = response.json()["data"]
    assert len(data) == 2 and all(item["id"] and item["b64_json"] for item in data)


async def test_variation_goes_to_the_variations_path(router: Any, pods: Any) -> None:
    body, headers = form({"n": 1}, [image_file(jpeg(24, 24), filename="in.jpg")])
    async with router([entry()]) as client:
        response = await client.post("/v1/images/variations", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert str(pods.requests[0].url) == A + "/v1/images/variations" and pods.requests[0].content == body


async def test_an_alias_is_renamed_in_a_re_encoded_form_with_the_images_unchanged(router: Any, pods: Any) -> None:
    image, mask = png(32, 32), png(32, 32, alpha=True)
    body, headers = form(
        {"prompt": "a hat", "model": "dall-e-2"},
        [image_file(image, "image[]"), image_file(png(16, 16), "image[]"), image_file(mask, "mask")],
    )
    async with router([entry(aliases=("dall-e-2",))]) as client:
        response = await client.post("/v1/images/edits", content=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = parts_of(pods.requests[0])
    assert sent["model"] == [b"tiny"] and sent["prompt"] == [b"a hat"]
    assert sent["image[]"] == [image, png(16, 16)] and sent["mask"] == [mask]
    assert len(response.json()["data"]) == 2  # one per input image


async def test_a_hugging_face_repo_id_names_the_model(router: Any, pods: Any) -> None:
    model = entry("sdxl-turbo", repo="stabilityai/sdxl-turbo", info=from_repo("stabilityai/sdxl-turbo"))
    body, headers = form({"model": "StabilityAI/SDXL-Turbo"}, [image_file()])
    async with router([model, entry("other", (B,), default=True)]) as client:
        response = await client.post("/v1/images/variations", content=body, headers=headers)
        generation = await client.post(
            "/v1/images/generations", json={"prompt": "x", "model": "stabilityai/sdxl-turbo"}
        )
    assert response.status_code == generation.status_code == 200
    assert parts_of(pods.requests[0])["model"] == [b"sdxl-turbo"]
    assert json.loads(pods.requests[1].content)["model"] == "sdxl-turbo" and str(pods.requests[1].url).startswith(A)


async def test_url_edits_are_stored_and_linked_and_the_pod_is_asked_for_b64(router: Any, pods: Any) -> None:
    body, headers = form({"prompt": "a hat", "response_format": "url"}, [image_file()])
    async with router([entry()]) as client:
        response = await client.post("/v1/images/edits", content=body, headers=headers)
        item = response.json()["data"][0]
        fetched = await client.get(item["url"])
    assert parts_of(pods.requests[0])["response_format"] == [b"b64_json"]
    assert urlsplit(item["url"]).path == f"/v1/images/files/{item['id']}" and "b64_json" not in item
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"


async def test_an_unreachable_pod_is_ejected_and_the_edit_goes_to_another(router: Any, pods: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pods.behaviour[A] = refuse
    body, headers = form({"prompt": "a hat"}, [image_file()])
    async with router([entry(endpoints=(A, B))]) as client:
        first = await client.post("/v1/images/edits", content=body, headers=headers)
        second = await client.post("/v1/images/edits", content=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert [str(r.url) for r in pods.requests] == [
        f"{A}/v1/images/edits",
        f"{B}/v1/images/edits",
        f"{B}/v1/images/edits",
    ]
    assert pods.requests[1].content == body


async def test_a_busy_pod_passes_the_variation_on_and_all_busy_is_the_pods_429(router: Any, pods: Any) -> None:
    busy = {"error": {"message": "queue full", "type": "rate_limit_error", "param": None, "code": "queue_full"}}
    pods.behaviour[A] = lambda r: httpx.Response(429, json=busy, headers={"Retry-After": "2"})
    body, headers = form({}, [image_file()])
    async with router([entry(endpoints=(A, B))]) as client:
        passed_on = await client.post("/v1/images/variations", content=body, headers=headers)
        pods.behaviour[B] = pods.behaviour[A]
        all_busy = await client.post("/v1/images/variations", content=body, headers=headers)
    assert passed_on.status_code == 200
    assert all_busy.status_code == 429 and all_busy.json() == busy and all_busy.headers["retry-after"] == "2"


async def test_edits_need_a_key_and_take_rate_budget_like_generations(router: Any, pods: Any, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-right\n")
    body, headers = form({"prompt": "a hat"}, [image_file()])
    right = {**headers, "Authorization": "Bearer sk-right"}
    async with router([entry()], api_keys_file=keys, rate_limit_rps=1, rate_limit_burst=1) as client:
        missing = await client.post("/v1/images/edits", content=body, headers=headers)
        first = await client.post("/v1/images/edits", content=body, headers=right)
        second = await client.post("/v1/images/variations", content=form({}, [image_file()])[0], headers=right)
    assert_envelope(missing, 401)
    assert first.status_code == 200
    assert_envelope(second, 429)
    assert pods.hits() == 1


async def test_uploads_may_be_larger_than_json_bodies_but_not_than_the_upload_limit(router: Any, pods: Any) -> None:
    big = png(200, 200, noise=True)  # about 120 kB
    body, headers = form({"prompt": "a hat"}, [image_file(big)])
    async with router([entry()], max_body_bytes=32_768, max_upload_bytes=200_000) as client:
        accepted = await client.post("/v1/images/edits", content=body, headers=headers)
        json_too_big = await client.post("/v1/images/generations", json={"prompt": "x" * 40_000})
        too_big, big_headers = form({"prompt": "a hat"}, [image_file(big, "image[]"), image_file(big, "image[]")])
        refused = await client.post("/v1/images/edits", content=too_big, headers=big_headers)
    assert accepted.status_code == 200, accepted.text
    assert_envelope(json_too_big, 413)
    assert_envelope(refused, 413)
    assert pods.hits() == 1


async def test_a_model_that_does_not_edit_is_a_400_before_any_pod(router: Any, pods: Any) -> None:
    body, headers = form({"prompt": "a hat"}, [image_file()])
    async with router([entry(supports=frozenset({"generations"}))]) as client:
        edit = await client.post("/v1/images/edits", content=body, headers=headers)
        stream = await client.post("/v1/images/generations", json={"prompt": "x", "stream": True})
    assert assert_envelope(edit, 400)["param"] == "model"
    assert assert_envelope(stream, 400)["param"] == "stream"
    assert pods.hits() == 0


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_pod_errors_on_uploads_are_passed_through_as_is(router: Any, pods: Any, path: str) -> None:
    envelope = {"error": {"message": "cannot decode", "type": "invalid_request_error", "param": "image", "code": "x"}}
    pods.behaviour[A] = lambda r: httpx.Response(400, json=envelope)
    fields = {"prompt": "a hat"} if path.endswith("edits") else {}
    body, headers = form(fields, [image_file()])
    async with router([entry()]) as client:
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 400 and response.json() == envelope
