"""Stored images with ids: ``store``, ``conversation_id`` and ``user`` accepted, ``GET /v1/images/{id}``
for the owner only while keys are on, until the images expire."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kubediffusion.router.signing import new_image_id
from kubediffusion.router.storage import FilesystemStore, ImageRecord
from tests.unit.router.conftest import PNG
from tests.unit.router.test_router_app import A, assert_envelope
from tests.unit.router.uploads import form, image_file

GEN = "/v1/images/generations"
KEY_A, KEY_B = {"Authorization": "Bearer sk-a"}, {"Authorization": "Bearer sk-b"}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text("sk-a\nsk-b\n")
    return path


async def test_stored_images_are_fetched_again_by_id_with_their_record(router: Any, pods: Any) -> None:
    body = {"prompt": "x", "n": 2, "store": True, "conversation_id": "conv-7", "user": "user-1234"}
    async with router() as client:
        response = await client.post(GEN, json=body)
        ids = [item["id"] for item in response.json()["data"]]
        raw = await client.get(f"/v1/images/{ids[0]}")
        described = await client.get(f"/v1/images/{ids[1]}", headers={"Accept": "application/json"})
    assert response.status_code == 200 and len(set(ids)) == 2
    assert all(item["b64_json"] for item in response.json()["data"])  # b64 answers keep their images
    assert raw.status_code == 200 and raw.content == PNG and raw.headers["content-type"] == "image/png"
    record = described.json()
    assert record["id"] == ids[1] and record["object"] == "image" and record["model"] == "tiny"
    assert record["conversation_id"] == "conv-7" and record["user"] == "user-1234"
    assert base64.b64decode(record["b64_json"]) == PNG and isinstance(record["created"], int)
    assert json.loads(pods.requests[0].content) == body  # the pod gets the client's body as is


async def test_images_are_not_stored_unless_asked_or_configured(router: Any, pods: Any) -> None:
    async with router() as client:
        plain = await client.post(GEN, json={"prompt": "x", "user": "u"})
        not_stored = await client.get(f"/v1/images/{plain.json()['data'][0]['id']}")
    async with router(store_default=True) as client:
        by_default = await client.post(GEN, json={"prompt": "x"})
        refused = await client.post(GEN, json={"prompt": "x", "store": False})
        kept = await client.get(f"/v1/images/{by_default.json()['data'][0]['id']}")
        not_kept = await client.get(f"/v1/images/{refused.json()['data'][0]['id']}")
    assert_envelope(not_stored, 404, "image_not_found")
    assert kept.status_code == 200 and kept.content == PNG
    assert_envelope(not_kept, 404, "image_not_found")


async def test_with_keys_only_the_storing_key_sees_an_image_and_others_get_a_missing_images_404(
    router: Any, keys: Path
) -> None:
    async with router(api_keys_file=keys) as client:
        stored = await client.post(GEN, json={"prompt": "x", "store": True}, headers=KEY_A)
        image_id = stored.json()["data"][0]["id"]
        own = await client.get(f"/v1/images/{image_id}", headers=KEY_A)
        other = await client.get(f"/v1/images/{image_id}", headers=KEY_B)
        missing = await client.get(f"/v1/images/{new_image_id()}", headers=KEY_B)
        no_key = await client.get(f"/v1/images/{image_id}")
    assert own.status_code == 200 and own.content == PNG
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json() and other.headers.get("content-type") == missing.headers.get("content-type")
    assert_envelope(no_key, 401)


async def test_an_image_stored_without_an_owner_is_nobodys_once_keys_are_on(router: Any, keys: Path) -> None:
    async with router(api_keys_file=keys) as client:
        store = client.app.state.router.store
        image_id = await store.put(PNG, ImageRecord(created=int(time.time()), owner=None))
        response = await client.get(f"/v1/images/{image_id}", headers=KEY_A)
    assert_envelope(response, 404, "image_not_found")


async def test_expired_images_are_gone_even_before_the_sweeper_runs(router: Any) -> None:
    async with router(url_ttl_seconds=60) as client:
        store = client.app.state.router.store
        old = await store.put(PNG, ImageRecord(created=int(time.time()) - 61))
        fresh = await store.put(PNG, ImageRecord(created=int(time.time())))
        expired = await client.get(f"/v1/images/{old}")
        alive = await client.get(f"/v1/images/{fresh}")
    assert_envelope(expired, 404, "image_not_found")
    assert alive.status_code == 200


@pytest.mark.parametrize("image_id", ["nope", "../../etc/passwd", "A" * 32, "0" * 31])
async def test_ids_that_cannot_be_ours_are_404(router: Any, image_id: str) -> None:
    async with router() as client:
        response = await client.get(f"/v1/images/{image_id}")
    assert response.status_code == 404


async def test_url_answers_are_stored_under_their_items_id(router: Any, keys: Path) -> None:
    async with router(api_keys_file=keys) as client:
        response = await client.post(GEN, json={"prompt": "x", "response_format": "url"}, headers=KEY_A)
        item = response.json()["data"][0]
        by_id = await client.get(f"/v1/images/{item['id']}", headers=KEY_A)
    assert urlsplit(item["url"]).path.endswith(item["id"]) and by_id.content == PNG


async def test_edits_accept_store_conversation_id_and_user_as_form_fields(router: Any) -> None:
    fields = {"prompt": "a hat", "store": "true", "conversation_id": "conv-9", "user": "u-1"}
    body, headers = form(fields, [image_file()])
    async with router() as client:
        response = await client.post("/v1/images/edits", content=body, headers=headers)
        image_id = response.json()["data"][0]["id"]
        record = (await client.get(f"/v1/images/{image_id}", headers={"Accept": "application/json"})).json()
    assert record["conversation_id"] == "conv-9" and record["user"] == "u-1"


async def test_conversation_ids_have_a_length_limit(router: Any, pods: Any) -> None:
    async with router() as client:
        response = await client.post(GEN, json={"prompt": "x", "conversation_id": "c" * 513})
    assert assert_envelope(response, 400)["param"] == "conversation_id" and pods.hits() == 0


async def test_a_pods_tame_id_is_kept_but_never_used_to_store(router: Any, pods: Any) -> None:
    answer = {"created": 1, "data": [{"b64_json": base64.b64encode(PNG).decode(), "id": "pod-id-1"}]}
    pods.behaviour[A] = lambda r: httpx.Response(200, json=answer)
    async with router() as client:
        kept = (await client.post(GEN, json={"prompt": "x"})).json()["data"][0]["id"]
        stored = (await client.post(GEN, json={"prompt": "x", "store": True})).json()["data"][0]["id"]
    assert kept == "pod-id-1" and stored != "pod-id-1" and len(stored) == 32


def test_filesystem_store_keeps_the_record_beside_the_image_and_sweeps_both(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    record = ImageRecord(created=5, owner="key:abc", model="m", conversation_id="c", user="u")
    image_id = asyncio.run(store.put(PNG, record))
    found = asyncio.run(store.get(image_id))
    assert found is not None and found.data == PNG and found.content_type == "image/png" and found.record == record
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{image_id}.json", f"{image_id}.png"]
    assert asyncio.run(store.delete_older_than(-10)) == 2 and not list(tmp_path.iterdir())


def test_filesystem_store_refuses_an_id_that_is_not_its_own_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        asyncio.run(FilesystemStore(tmp_path).put(PNG, image_id="../escape"))


def test_the_deployment_default_is_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubediffusion.router.settings import RouterSettings

    assert RouterSettings().store_default is False
    monkeypatch.setenv("KD_ROUTER_STORE_DEFAULT", "true")
    monkeypatch.setenv("KD_ROUTER_MAX_UPLOAD_BYTES", "2048")
    settings = RouterSettings()
    assert settings.store_default is True and settings.max_upload_bytes == 2048


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits", "/v1/images/variations"])
async def test_get_on_an_image_endpoint_is_a_wrong_method_not_a_missing_image(router: Any, path: str) -> None:
    async with router() as client:
        response = await client.get(path)
    assert_envelope(response, 405, "method_not_allowed")
