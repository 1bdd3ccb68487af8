"""Compute time per request: each batch's seconds shared by its requests by images, reported in the JSON
answer's X-KubeDiffusion-Compute-Seconds and in a stream's comment (the contract the router reads)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from kubediffusion.api.computetime import COMPUTE_SECONDS_HEADER, comment, comment_seconds, compute_seconds
from kubediffusion.inference.backend import ImageJob, StepCallback
from kubediffusion.inference.requestctx import Batch, RequestContext
from tests.unit.api.sample_images import form, png
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import poll, serve

pytestmark = pytest.mark.timeout(30)
GENERATE = "/v1/images/generations"
BATCH_S = 0.05


class SlowBackend(FakeBackend):
    """Each pipeline call takes BATCH_S, so a batch's compute time is large enough to compare shares."""

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        time.sleep(BATCH_S)
        return super().generate(jobs, on_step)


def test_a_batch_is_shared_by_images_and_a_requests_items_add_up() -> None:
    one, three, edit = RequestContext("one"), RequestContext("three"), RequestContext("edit")
    batch = Batch.of([(one, 1, 5.0), (three, 3, 4.0), (edit, 2, 6.0), (edit, 2, 3.0), (None, 2, 1.0)])
    assert batch.images == 10 and [s.request.request_id for s in batch.shares] == ["one", "three", "edit"]
    assert [(s.images, s.enqueued_at) for s in batch.shares] == [(1, 5.0), (3, 4.0), (4, 3.0)]
    assert batch.request_ids == "one,three,edit"
    batch.started = time.monotonic() - 2.0
    batch.finish()
    seconds = batch.seconds
    assert seconds >= 2.0
    assert one.compute_seconds == pytest.approx(seconds / 10)
    assert three.compute_seconds == pytest.approx(3 * seconds / 10)
    assert edit.compute_seconds == pytest.approx(4 * seconds / 10)
    Batch.of([(one, 1, 0.0)]).finish()  # another batch adds to what the request had
    assert one.compute_seconds > seconds / 10


def test_the_wire_format_is_the_one_the_router_reads() -> None:
    assert comment(1.5) == b": x-kubediffusion-compute-seconds 1.500000\n\n"
    assert comment_seconds(comment(0.25)) == 0.25 and comment_seconds(b": keep-alive\n\n") is None
    assert compute_seconds("1.234") == 1.234
    for bad in (None, "", "x", "-1", "nan", "inf", "86401"):
        assert compute_seconds(bad) == 0.0


async def test_requests_sharing_a_batch_are_billed_its_time_by_images(tmp_path: Path) -> None:
    backend = SlowBackend()
    async with serve(settings_for(tmp_path, batch_window_ms=0), lambda _: backend) as (client, app):
        backend.gate.clear()
        first = asyncio.create_task(client.post(GENERATE, json={"prompt": "a"}))
        await poll(backend.running.is_set)
        small = asyncio.create_task(client.post(GENERATE, json={"prompt": "a", "n": 1}))
        large = asyncio.create_task(client.post(GENERATE, json={"prompt": "a", "n": 3}))
        await poll(lambda: app.state.server.batcher.queued_requests == 2)
        backend.gate.set()
        alone, one, three = await asyncio.gather(first, small, large)
    assert [call_sizes(call) for call in backend.calls] == [[1], [1, 3]]
    seconds = [float(answer.headers[COMPUTE_SECONDS_HEADER]) for answer in (alone, one, three)]
    assert seconds[0] >= BATCH_S  # its batch was its own (the gate's wait included: the call took that long)
    assert seconds[1] > 0 and seconds[2] == pytest.approx(3 * seconds[1], rel=1e-3)
    assert seconds[1] + seconds[2] >= BATCH_S


def call_sizes(call: list[ImageJob]) -> list[int]:
    return [len(job.seeds) for job in call]


async def test_an_edit_of_two_images_adds_its_jobs_and_a_refused_request_reports_nothing(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path), lambda _: SlowBackend()) as (client, _):
        body, content_type = form({"prompt": "p"}, [("image[]", png()), ("image[]", png())])
        edit = await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
        refused = await client.post(GENERATE, json={"prompt": "a", "size": "8x8"})
    assert edit.status_code == 200 and len(edit.json()["data"]) == 2
    assert float(edit.headers[COMPUTE_SECONDS_HEADER]) >= BATCH_S
    assert refused.status_code == 400 and COMPUTE_SECONDS_HEADER not in refused.headers


async def test_a_stream_reports_its_compute_time_in_a_comment_before_its_images(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path), lambda _: SlowBackend()) as (client, _):
        response = await client.post(GENERATE, json={"prompt": "a", "stream": True, "partial_images": 1, "n": 2})
    assert response.status_code == 200 and COMPUTE_SECONDS_HEADER not in response.headers
    body = response.content
    found = re.findall(rb"(?m)^: x-kubediffusion-compute-seconds ([0-9.]+)\n\n", body)
    assert len(found) == 1 and float(found[0]) >= BATCH_S
    at = body.index(b": x-kubediffusion-compute-seconds")
    assert body.index(b"image_generation.partial_image") < at < body.index(b"image_generation.completed")
