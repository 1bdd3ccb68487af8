"""Allow-lists: a model outside a tenant's list is a missing model, on every endpoint that names or lists
models, in the same words, by the same path (no pod reached, no quota spent), in about the same time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from kubediffusion.router.routing import ModelEntry
from tests.unit.router.tenancy import (
    A_KEY,
    ADMIN_KEY,
    B_KEY,
    MODELS,
    SDXL,
    TENANTS,
    TINY,
    bearer,
    tenants_file,
    write_file,
)
from tests.unit.router.uploads import form, png

GEN = "/v1/images/generations"
FLUX = ModelEntry(name="flux-dev", endpoints=("http://127.0.9.3:8000",))


def same_answer(hidden: httpx.Response, missing: httpx.Response, hidden_name: str, missing_name: str) -> None:
    """Equal status, headers (but the request id and length) and body, the model's name aside."""
    assert hidden.status_code == missing.status_code
    assert hidden.text.replace(hidden_name, "<model>") == missing.text.replace(missing_name, "<model>")
    skip = {"x-request-id", "content-length"}
    assert {k: v for k, v in hidden.headers.items() if k not in skip} == {
        k: v for k, v in missing.headers.items() if k not in skip
    }


async def test_models_and_metadata_list_only_the_tenants_models(router: Any, tmp_path: Path) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path)) as client:
        listed = {
            key: [m["id"] for m in (await client.get("/v1/models", headers=bearer(key))).json()["data"]]
            for key in (A_KEY, B_KEY, ADMIN_KEY)
        }
        metadata_b = (await client.get("/v1/metadata", headers=bearer(B_KEY))).json()
        metadata_all = (await client.get("/v1/metadata", headers=bearer(ADMIN_KEY))).json()
    assert listed == {A_KEY: ["tiny-sd"], B_KEY: ["sdxl-turbo"], ADMIN_KEY: ["sdxl-turbo", "tiny-sd"]}
    assert [m["id"] for m in metadata_b["models"]] == ["sdxl-turbo"]
    assert metadata_b["default_model"] == "sdxl-turbo"  # its only model, as in a cluster of one model
    assert metadata_all["default_model"] == "tiny-sd"
    assert "tiny-sd" not in str(metadata_b) and "dall-e-2" not in str(metadata_b)


async def test_a_hidden_model_is_answered_exactly_like_a_missing_one(router: Any, tmp_path: Path, pods: Any) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path)) as client:
        ask = bearer(A_KEY)
        pairs = [
            (
                await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo"}, headers=ask),
                await client.post(GEN, json={"prompt": "x", "model": "sdxl-turbo2"}, headers=ask),
            ),
            (
                await client.get("/v1/models/sdxl-turbo", headers=ask),
                await client.get("/v1/models/sdxl-turbo2", headers=ask),
            ),
        ]
        for path in ("/v1/images/edits", "/v1/images/variations"):
            fields = {"prompt": "a hat"} if path.endswith("edits") else {}
            answers = []
            for name in ("sdxl-turbo", "sdxl-turbo2"):
                body, headers = form({**fields, "model": name}, [("image", ("a.png", png(), "image/png"))])
                answers.append(await client.post(path, content=body, headers={**headers, **ask}))
            pairs.append((answers[0], answers[1]))
        by_alias = await client.post(GEN, json={"prompt": "x", "model": "dall-e-2"}, headers=ask)
    for hidden, missing in pairs:
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
        same_answer(hidden, missing, "sdxl-turbo", "sdxl-turbo2")
    assert by_alias.status_code == 200 and pods.hits("http://127.0.9.1:8000") == 1 and pods.hits() == 1


async def test_hidden_and_missing_models_take_about_the_same_time(router: Any, tmp_path: Path) -> None:
    async with router(MODELS, tenants_file=tenants_file(tmp_path), rate_limit_rps=0) as client:
        times: dict[str, list[float]] = {"sdxl-turbo": [], "sdxl-turbo2": []}
        for _ in range(150):
            for name, samples in times.items():  # interleaved: the machine's noise hits both alike
                started = time.perf_counter()
                answer = await client.post(GEN, json={"prompt": "x", "model": name}, headers=bearer(A_KEY))
                samples.append(time.perf_counter() - started)
                assert answer.status_code == 404
    hidden, missing = (statistics.median(samples) for samples in times.values())
    assert 0.5 < hidden / missing < 2.0, (hidden, missing)


async def test_the_default_model_is_the_tenants_only_if_it_may_use_it(router: Any, tmp_path: Path) -> None:
    text = TENANTS + '  - name: no-default\n    keys: ["sk-nd"]\n    models: ["sdxl-*", "flux-*"]\n'
    async with router([TINY, SDXL, FLUX], tenants_file=tenants_file(tmp_path, text)) as client:
        unnamed = await client.post(GEN, json={"prompt": "x"}, headers=bearer("sk-nd"))
        imagine = await client.post("/imagine/generate", json={"prompt": "x"}, headers=bearer("sk-nd"))
        info = (await client.get("/imagine/info", headers=bearer("sk-nd"))).json()
    async with router([SDXL, FLUX]) as client:  # a router that truly has no default model
        unnamed_none = await client.post(GEN, json={"prompt": "x"})
        imagine_none = await client.post("/imagine/generate", json={"prompt": "x"})
        info_none = (await client.get("/imagine/info")).json()
    same_answer(unnamed, unnamed_none, "", "")
    same_answer(imagine, imagine_none, "", "")
    assert unnamed.status_code == 404 and imagine.status_code == 503
    assert info == info_none and info["model"] is None


async def test_stored_images_of_a_model_no_longer_allowed_are_missing(router: Any, tmp_path: Path) -> None:
    path = tenants_file(tmp_path)
    async with router(MODELS, tenants_file=path) as client:
        stored = await client.post(GEN, json={"prompt": "x", "store": True}, headers=bearer(A_KEY))
        image_id = stored.json()["data"][0]["id"]
        before = await client.get(f"/v1/images/{image_id}", headers=bearer(A_KEY))
        write_file(path, TENANTS.replace('models: ["tiny-*"]', 'models: ["sdxl-*"]'), stamp=2)
        after = await client.get(f"/v1/images/{image_id}", headers=bearer(A_KEY))
        missing = await client.get(f"/v1/images/{'0' * 32}", headers=bearer(A_KEY))
    assert before.status_code == 200
    same_answer(after, missing, "", "")
    assert after.status_code == 404 and after.json()["error"]["code"] == "image_not_found"
