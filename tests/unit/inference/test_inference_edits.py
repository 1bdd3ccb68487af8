"""Edits and variations through the inference app with a fake backend: bad uploads never reach the batcher,
images are decoded into the jobs the backend gets (kind, mask, size, strength), and edits batch by key."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from kubediffusion.inference.backend import ImageJob
from tests.support.asgi import HangingUpClient
from tests.unit.api.bad_uploads import BAD_UPLOADS, UPLOAD_LIMIT, BadUpload
from tests.unit.api.sample_images import form, image_file, mask_png, png
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"
LIMITS = {"minSize": 64, "maxSize": 256, "maxN": 4, "maxSteps": 50}


class EnqueueSpy:
    """Wraps ``Batcher.enqueue``: every item that reached the batcher."""

    def __init__(self, app: Any) -> None:
        batcher = app.state.server.batcher
        self.items: list[ImageJob] = []
        self._enqueue = batcher.enqueue

        def enqueue(items: Any) -> Any:
            self.items.extend(items)
            return self._enqueue(items)

        batcher.enqueue = enqueue


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy]]:
    backend = FakeBackend()
    settings = settings_for(tmp_path, max_upload_bytes=UPLOAD_LIMIT, limits=LIMITS, batch_window_ms=50)
    async with serve(settings, lambda _: backend) as (client, app):
        yield client, backend, EnqueueSpy(app)


async def post_form(client: httpx.AsyncClient, path: str, fields: dict[str, str], images: Any) -> httpx.Response:
    body, content_type = form(fields, images)
    return await client.post(path, content=body, headers={"content-type": content_type})


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=[case.case for case in BAD_UPLOADS])
async def test_bad_upload_is_a_4xx_envelope_and_never_reaches_the_batcher(
    served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy], case: BadUpload
) -> None:
    client, backend, spy = served
    headers = {"content-type": case.content_type} if case.content_type is not None else {}
    response = await client.post(case.path, content=case.body, headers=headers)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == case.param, error
    if case.code is not None:
        assert error["code"] == case.code, error
    assert spy.items == [] and backend.calls == []


def decoded(response: httpx.Response) -> list[Image.Image]:
    assert response.status_code == 200, response.text
    return [
        Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB") for item in response.json()["data"]
    ]


async def test_the_mask_or_the_images_own_transparency_makes_an_inpainting_job(
    served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy],
) -> None:
    client, backend, _ = served
    holed = png((64, 64), mode="RGBA", colour=(90, 0, 0), hole=(0, 0, 8, 8))
    opaque_rgba = png((64, 64), mode="RGBA", colour=(80, 0, 0))
    cases = [
        ([("image", png(colour=(120, 0, 0)))], "img2img", 0.75),
        ([("image", png(colour=(110, 0, 0))), ("mask", mask_png())], "inpaint", 1.0),
        ([("image", holed)], "inpaint", 1.0),
        ([("image", opaque_rgba)], "img2img", 0.75),  # an alpha channel with nothing transparent
    ]
    for images, kind, strength in cases:
        (image,) = decoded(await post_form(client, EDITS, {"prompt": "p"}, images))
        job = backend.calls[-1][0]
        assert job.kind == kind and job.source is not None and job.source.strength == strength
        assert image.getpixel((0, 0))[2] == (200 if kind == "inpaint" else 100)
    mask = backend.calls[1][0].source.mask  # type: ignore[union-attr]
    assert mask.mode == "L" and mask.getpixel((0, 0)) == 255 and mask.getpixel((40, 40)) == 0


async def test_inputs_are_resized_to_the_output_size_and_several_images_each_make_n(
    served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy],
) -> None:
    client, _, spy = served
    images = [("image[]", image_file((100, 60), "JPEG")), ("image[]", image_file((40, 40), "WEBP"))]
    response = await post_form(client, EDITS, {"prompt": "p", "n": "2", "seed": "10", "strength": "0.3"}, images)
    assert [image.size for image in decoded(response)] == [(104, 64)] * 2 + [(64, 64)] * 2
    assert [job.seeds for job in spy.items] == [(10, 11), (12, 13)]
    assert {job.source.strength for job in spy.items if job.source} == {0.3}
    sized = await post_form(client, EDITS, {"prompt": "p", "size": "128x64"}, images)
    assert [image.size for image in decoded(sized)] == [(128, 64), (128, 64)]


async def test_variation_is_image_to_image_from_the_image_alone(
    served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy],
) -> None:
    client, backend, _ = served
    response = await post_form(client, VARIATIONS, {"n": "2", "response_format": "url"}, [("image", png())])
    assert len(decoded(response)) == 2
    (job,) = backend.calls[-1]
    assert (job.kind, job.params.prompt, job.params.guidance, job.source.strength) == ("img2img", "", 0.0, 0.6)  # type: ignore[union-attr]


async def test_edits_batch_with_edits_of_the_same_kind_strength_and_size_only(tmp_path: Path) -> None:
    backend = FakeBackend()
    settings = settings_for(tmp_path, limits=LIMITS, batch_window_ms=300, max_upload_bytes=UPLOAD_LIMIT)
    async with serve(settings, lambda _: backend) as (client, app):
        backend.gate.clear()  # hold the first batch so that all the others queue behind it
        first = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "hold"}))
        await poll(backend.running.is_set)
        edit = {"prompt": "p", "strength": "0.5"}
        requests = [
            post_form(client, EDITS, edit, [("image", png())]),
            post_form(client, EDITS, {**edit, "seed": "3"}, [("image", png(colour=(1, 2, 3)))]),  # same key
            post_form(client, EDITS, {**edit, "strength": "0.6"}, [("image", png())]),  # another strength
            post_form(client, EDITS, edit, [("image", png((128, 64)))]),  # another size
            post_form(client, EDITS, edit, [("image", png()), ("mask", mask_png())]),  # inpainting
            client.post("/v1/images/generations", json={"prompt": "g"}),  # text-to-image
        ]
        tasks = [asyncio.create_task(request) for request in requests]
        await poll(lambda: app.state.server.batcher.queued_requests == len(requests))
        backend.gate.set()
        assert all(response.status_code == 200 for response in await asyncio.gather(first, *tasks))
    batches = [[(job.kind, job.source.strength if job.source else None) for job in call] for call in backend.calls]
    assert sorted(len(batch) for batch in batches) == [1, 1, 1, 1, 1, 2]
    assert [("img2img", 0.5), ("img2img", 0.5)] in batches


async def test_a_model_without_edit_pipelines_answers_400_before_queueing(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.edit_kinds = ("img2img",)  # no inpainting pipeline for this model
    async with serve(settings_for(tmp_path, limits=LIMITS), lambda _: backend) as (client, app):
        spy = EnqueueSpy(app)
        assert (await post_form(client, EDITS, {"prompt": "p"}, [("image", png())])).status_code == 200
        masked = await post_form(client, EDITS, {"prompt": "p"}, [("image", png()), ("mask", mask_png())])
        backend.edit_kinds = ()
        plain = await post_form(client, VARIATIONS, {}, [("image", png())])
    for response in (masked, plain):
        assert response.status_code == 400
        assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("model", "unsupported_model")
    assert len(spy.items) == 1


async def test_a_variation_ignores_the_images_transparency(
    served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy],
) -> None:
    client, backend, _ = served
    holed = png((64, 64), mode="RGBA", hole=(0, 0, 8, 8))
    assert (await post_form(client, VARIATIONS, {}, [("image", holed)])).status_code == 200
    assert backend.calls[-1][0].kind == "img2img"


async def test_uploads_have_their_own_body_limit(served: tuple[httpx.AsyncClient, FakeBackend, EnqueueSpy]) -> None:
    client, _, _ = served
    two_mib = "u" * (2 * 1024 * 1024)
    json_body = await client.post("/v1/images/generations", json={"prompt": "a", "user": two_mib})
    upload = await post_form(client, EDITS, {"prompt": "a", "user": two_mib}, [("image", png())])
    assert json_body.status_code == 413  # the JSON routes keep max_body_bytes (1 MiB)
    assert upload.status_code == 400 and upload.json()["error"]["code"] == "string_above_max_length"


async def test_an_edit_whose_client_hangs_up_while_queued_is_dropped(tmp_path: Path) -> None:
    backend = FakeBackend()
    settings = settings_for(tmp_path, max_batch_size=1, batch_window_ms=0, limits=LIMITS)
    async with serve(settings, lambda _: backend) as (client, app):
        backend.gate.clear()
        running = asyncio.create_task(client.post("/v1/images/generations", json={"prompt": "first"}))
        await poll(backend.running.is_set)
        body, content_type = form({"prompt": "gone"}, [("image[]", png()), ("image[]", png())])
        hanging = HangingUpClient(app, EDITS, body, host="inference.test")
        hanging._scope["headers"] = [(b"content-type", content_type.encode()), (b"host", b"inference.test")]
        call = hanging.start()
        await poll(lambda: app.state.server.batcher.queued_requests == 2)  # one job per image
        hanging.hang_up()
        await asyncio.wait_for(call, 5)
        assert app.state.server.batcher.queued_requests == 0
        backend.gate.set()
        assert (await running).status_code == 200
    assert [job.params.prompt for call_ in backend.calls for job in call_] == ["first"]
