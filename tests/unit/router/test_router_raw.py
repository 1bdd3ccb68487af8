"""Raw image answers: ``Accept: image/png`` (jpeg, webp, ``image/*``) with one image gets its bytes."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from kubediffusion.api.multipart import parse_multipart
from kubediffusion.router.negotiation import wanted_image
from tests.unit.router.conftest import PNG
from tests.unit.router.test_router_app import A, assert_envelope
from tests.unit.router.uploads import form, image_file

GEN = "/v1/images/generations"
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


def answer_with(image: bytes) -> Any:
    return lambda r: httpx.Response(200, json={"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}]})


async def test_accept_png_with_one_image_answers_the_png_itself(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"}, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.content == PNG
    assert response.headers["content-type"] == "image/png" and len(response.headers["x-image-id"]) == 32
    assert json.loads(pods.requests[0].content) == {"prompt": "x"}  # png is the pod's default: body as is


async def test_accept_decides_the_output_format_when_the_request_names_none(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer_with(WEBP)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"}, headers={"Accept": "image/webp"})
    assert json.loads(pods.requests[0].content)["output_format"] == "webp"
    assert response.content == WEBP and response.headers["content-type"] == "image/webp"


async def test_image_star_takes_the_requests_own_output_format(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer_with(JPEG)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x", "output_format": "jpeg"}, headers={"Accept": "image/*"})
    assert response.headers["content-type"] == "image/jpeg" and response.content == JPEG
    assert json.loads(pods.requests[0].content) == {"prompt": "x", "output_format": "jpeg"}


@pytest.mark.parametrize(
    ("body", "accept", "param"),
    [
        ({"prompt": "x", "n": 2}, "image/png", "n"),
        ({"prompt": "x", "output_format": "jpeg"}, "image/png", "output_format"),
        ({"prompt": "x", "stream": True}, "image/png", "stream"),
    ],
)
async def test_a_raw_answer_the_request_contradicts_is_a_400_before_any_pod(
    router: Any, pods: Any, body: dict[str, Any], accept: str, param: str
) -> None:
    async with router() as client:
        response = await client.post(GEN, json=body, headers={"Accept": accept})
    assert assert_envelope(response, 400)["param"] == param
    assert pods.hits() == 0


async def test_url_is_not_a_raw_answers_business_the_pod_is_asked_for_b64(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post(
            GEN, json={"prompt": "x", "response_format": "url"}, headers={"Accept": "image/png"}
        )
        by_id = await client.get(f"/v1/images/{response.headers['x-image-id']}")
    assert response.content == PNG and json.loads(pods.requests[0].content)["response_format"] == "b64_json"
    assert by_id.status_code == 404  # not stored: nobody asked


async def test_a_stored_raw_answer_is_fetched_again_by_its_header_id(router: Any) -> None:
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x", "store": True}, headers={"Accept": "image/png"})
        by_id = await client.get(f"/v1/images/{response.headers['x-image-id']}")
    assert by_id.status_code == 200 and by_id.content == PNG


async def test_an_edit_can_answer_raw_bytes_and_its_form_gets_the_accepted_format(router: Any, pods: Any) -> None:
    pods.behaviour[A] = answer_with(WEBP)
    body, headers = form({"prompt": "a hat"}, [image_file()])
    async with router() as client:
        response = await client.post("/v1/images/edits", content=body, headers={**headers, "Accept": "image/webp"})
    sent = {p.name: p.data for p in parse_multipart(pods.requests[0].content, pods.requests[0].headers["content-type"])}
    assert sent["output_format"] == b"webp" and sent["prompt"] == b"a hat"
    assert response.content == WEBP and response.headers["content-type"] == "image/webp"


async def test_pod_errors_stay_json_envelopes_under_accept_png(router: Any, pods: Any) -> None:
    envelope = {"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": None}}
    pods.behaviour[A] = lambda r: httpx.Response(400, json=envelope)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"}, headers={"Accept": "image/png"})
    assert response.status_code == 400 and response.json() == envelope


async def test_a_pod_answering_two_images_for_a_raw_answer_is_a_502(router: Any, pods: Any) -> None:
    two = {"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode()}] * 2}
    pods.behaviour[A] = lambda r: httpx.Response(200, json=two)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"}, headers={"Accept": "image/png"})
    assert_envelope(response, 502, "bad_upstream_response")


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, None),
        ("", None),
        ("*/*", None),
        ("application/json", None),
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/webp", "webp"),
        ("image/*", "any"),
        ("IMAGE/PNG", "png"),
        ("image/png, application/json", None),  # a tie: JSON, the API's own answer
        ("application/json;q=0.5, image/png", "png"),
        ("image/png;q=0.4, application/json;q=0.9", None),
        ("image/png;q=0.5, image/webp;q=0.8", "webp"),
        ("image/png;q=0", None),
        ("image/gif", None),
        ("text/html, image/png;q=0.9, */*;q=0.8", "png"),
        ("image/png;q=bogus", "png"),
    ],
)
def test_accept_negotiation(accept: str | None, wanted: str | None) -> None:
    assert wanted_image(accept) == wanted
