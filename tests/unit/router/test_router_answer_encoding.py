"""A changed answer is written back as ``JSONResponse`` would write it, its long images copied in."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from kubediffusion.router import delivery
from kubediffusion.router.delivery import encode_answer, parse_items
from tests.unit.router.test_router_app import A

GEN = "/v1/images/generations"


def rewritten(raw: bytes) -> bytes:
    """What the router writes for the pod's ``raw`` answer once it has given its items ids."""
    payload, items = parse_items(raw)
    for n, item in enumerate(items):
        item["id"] = f"id{n}"
    return encode_answer(payload, items, escaped=b"\\" in raw)


def expected(raw: bytes) -> bytes:
    payload = json.loads(raw)
    for n, item in enumerate(payload["data"]):
        item["id"] = f"id{n}"
    return bytes(JSONResponse(payload).body)


LONG = base64.b64encode(secrets.token_bytes(30_000)).decode()
ANSWERS: list[dict[str, Any]] = [
    {"created": 1, "data": [{"b64_json": LONG}]},
    {"created": 1, "data": [{"b64_json": LONG, "revised_prompt": "ein Bär, 猫"}, {"b64_json": LONG}]},
    {"created": 1, "data": [{"b64_json": "AAAA"}, {"b64_json": LONG[:5000]}], "usage": {"total_tokens": 3}},
    {"created": 1, "data": [{"b64_json": LONG, "revised_prompt": 'say "cheese"\n'}]},  # escapes: no copying
    {"created": 1, "data": [{"b64_json": 7}, {"url": "http://x/y"}, {"b64_json": LONG}]},
]


@pytest.mark.parametrize("answer", ANSWERS, ids=["one", "non-ascii", "short-and-long", "escaped", "odd-items"])
@pytest.mark.parametrize("ensure_ascii", [False, True], ids=["utf8", "ascii-escaped"])
def test_a_changed_answer_is_what_jsonresponse_writes(answer: dict[str, Any], ensure_ascii: bool) -> None:
    raw = json.dumps(answer, ensure_ascii=ensure_ascii).encode()
    assert rewritten(raw) == expected(raw)


@settings(max_examples=200, deadline=None)
@given(
    images=st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    prompt=st.text(max_size=20),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=10) | st.integers(), max_size=3),
)
def test_any_answer_is_written_as_jsonresponse_writes_it(
    images: list[bytes], prompt: str, extra: dict[str, Any]
) -> None:
    original = delivery.COPIED_STRING_CHARS
    delivery.COPIED_STRING_CHARS = 8  # every image but the smallest copied in
    try:
        data = [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": prompt} for image in images]
        raw = json.dumps({**extra, "created": 1, "data": data}, ensure_ascii=False).encode()
        assert rewritten(raw) == expected(raw)
    finally:
        delivery.COPIED_STRING_CHARS = original


async def test_a_large_answer_gets_its_ids_and_keeps_its_image_byte_for_byte(router: Any, pods: Any) -> None:
    image = secrets.token_bytes(1_100_000)
    answer = {"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}], "output_format": "png"}
    pods.behaviour[A] = lambda request: httpx.Response(200, json=answer)
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    payload = response.json()
    assert base64.b64decode(payload["data"][0]["b64_json"]) == image
    assert len(payload["data"][0]["id"]) == 32 and payload["output_format"] == "png"
