"""Regressions from the fuzz and the hardening review, through the router app (the inference side is in
tests/unit/inference/test_inference_http_edges.py, the schema side in tests/unit/api)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from kubediffusion.api.schema import ImageGenerationRequest
from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.relay import upstream_body
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings

JSON = {"content-type": "application/json"}


async def test_an_unpaired_surrogate_in_model_is_a_400_not_a_500(tmp_path: Path) -> None:
    """The fuzz's find: the 404 naming model "\\ud800" could not be rendered as UTF-8 and became a 500."""
    pod_requests: list[httpx.Request] = []
    settings = RouterSettings(discovery="static", storage_dir=tmp_path, signing_key="s" * 32)
    table = RoutingTable([ModelEntry(name="tiny", endpoints=("http://127.0.9.1:8000",))])
    app = create_app(
        settings, discovery=StaticDiscovery(table=table), transport=httpx.MockTransport(pod_requests.append)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://r"
        ) as client,
    ):
        escaped = await client.post(
            "/v1/images/generations", content=b'{"prompt": "a", "model": "\\ud800"}', headers=JSON
        )
        raw = await client.post(
            "/v1/images/generations", content=b'{"prompt": "a", "model": "\xed\xa0\x80"}', headers=JSON
        )
    for response in (escaped, raw):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "model"
    assert pod_requests == []


def test_the_body_sent_to_a_pod_is_no_bigger_than_the_clients_when_rewritten() -> None:
    """An alias renamed or url turned into b64_json re-encodes the body; non-ASCII text used to become
    \\u escapes, up to three times its size, so a body the router accepted could exceed the pod's limit."""
    client_body = json.dumps(
        {"prompt": "é" * 1000, "user": "日本" * 1000, "model": "alias"}, ensure_ascii=False
    ).encode()
    entry = ModelEntry(name="sdxl", aliases=("alias",))
    parsed = ImageGenerationRequest.model_validate_json(client_body)
    sent = upstream_body(client_body, parsed, entry, "url")
    assert len(sent) <= len(client_body) + len('"response_format":"b64_json",')
    assert json.loads(sent) == {**json.loads(client_body), "model": "sdxl", "response_format": "b64_json"}
