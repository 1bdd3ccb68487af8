"""InvokeAI through its session queue API (``invokeai/app/api/routers/session_queue.py``, ``images.py``).

A job: ``POST /api/v1/queue/default/enqueue_batch`` with the text-to-image graph of
:mod:`.invokeai_graph` and one seed per image; poll ``GET /api/v1/queue/default/b/{batch_id}/status``
until nothing of the batch is pending, waiting or in progress; read each queue item
(``GET /api/v1/queue/default/i/{item_id}``: its status, its session's results, the ``l2i`` node's
``image_name``); fetch ``GET /api/v1/images/i/{image_name}/full`` (PNG). A failed or cancelled item is
a 502 with InvokeAI's error; a job that times out (or whose request is cancelled) has its batch
cancelled upstream (``PUT /api/v1/queue/default/cancel_by_batch_ids``).

The model is ``engine_model``, InvokeAI's model key; its record (``GET /api/v2/models/i/{key}``) gives
the identifier the graph needs and its base: SD 1.x, SD 2.x or SDXL main models (others: not ready,
with the reason). Readiness: ``GET /api/v1/app/version`` answers, and the model record was found.
Seeds are 32-bit in InvokeAI: ``seed mod 2**32``. A credential is sent as ``Authorization: Bearer``
(InvokeAI's multi-user mode). PNG only; no edits, no partial images.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.errors import BadGatewayError, UpstreamNotReady
from kubediffusion.inference.engines.http import Upstream
from kubediffusion.inference.engines.invokeai_graph import DEFAULT_SCHEDULER, OUTPUT, SUPPORTED_BASES, batch
from kubediffusion.inference.engines.tasks import in_background
from kubediffusion.inference.settings import InferenceSettings

QUEUE = "/api/v1/queue/default"
HEALTH = "/api/v1/app/version"
SEED_MODULUS = 2**32
UNFINISHED = ("pending", "in_progress", "waiting")
CAPABILITIES = Capabilities(output_formats=frozenset({"png"}))


class InvokeAIEngine:
    def __init__(
        self, settings: InferenceSettings, key: str | None, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        if not settings.engine_model:
            raise ModelLoadError("the invokeai engine needs engine_model: the InvokeAI model key to generate with")
        self.settings = settings
        headers = {"Authorization": f"Bearer {key}"} if key else None
        self.upstream = Upstream(
            "invokeai",
            settings.engine_url,
            timeout=settings.engine_timeout_seconds,
            headers=headers,
            transport=transport,
        )
        self.scheduler = settings.engine_sampler or DEFAULT_SCHEDULER
        self.record: dict[str, Any] | None = None
        self._description = BackendDescription(
            pipeline_class=f"invokeai:{settings.engine_model}", device="upstream", dtype="n/a"
        )

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        CAPABILITIES.check("invokeai", request)

    async def probe(self) -> None:
        within = self.settings.engine_ready_timeout_seconds
        await self.upstream.probe(HEALTH, within)
        if self.record is None:
            path = f"/api/v2/models/i/{quote(self.settings.engine_model, safe='')}"
            try:
                record = (await self.upstream.probe(path, within)).json()
            except ValueError:
                raise UpstreamNotReady(f"invokeai answered GET {path} with something that is not JSON") from None
            except UpstreamNotReady as exc:
                raise UpstreamNotReady(
                    f"invokeai has no model with key {self.settings.engine_model!r}: {exc}"
                ) from None
            if not isinstance(record, dict) or not all(k in record for k in ("key", "hash", "name", "base", "type")):
                raise UpstreamNotReady(
                    f"invokeai's record of model {self.settings.engine_model!r} lacks its identifier"
                )
            if record["base"] not in SUPPORTED_BASES or record["type"] != "main":
                raise UpstreamNotReady(
                    f"invokeai model {self.settings.engine_model!r} is a {record['base']} {record['type']} model; "
                    "this adapter builds graphs for sd-1, sd-2 and sdxl main models"
                )
            self.record = record

    async def generate(self, job: ImageJob) -> list[bytes]:
        if self.record is None:
            try:
                await self.probe()
            except UpstreamNotReady as exc:
                raise BadGatewayError(f"The invokeai engine is not ready: {exc}") from None
        assert self.record is not None
        seeds = tuple(seed % SEED_MODULUS for seed in job.seeds)
        body = batch(self.record, job.params, seeds, self.scheduler)
        enqueued = await self.upstream.json("POST", f"{QUEUE}/enqueue_batch", json=body)
        try:
            batch_id, item_ids = enqueued["batch"]["batch_id"], [int(item) for item in enqueued["item_ids"]]
        except (TypeError, KeyError, ValueError):
            raise self.upstream.malformed("enqueue_batch answered without batch.batch_id and item_ids") from None
        if len(item_ids) != len(seeds):
            raise self.upstream.malformed(f"enqueue_batch made {len(item_ids)} queue items for {len(seeds)} seeds")
        try:
            await self._wait(batch_id)
            items = [await self.upstream.json("GET", f"{QUEUE}/i/{item}") for item in item_ids]
        except BaseException:
            in_background(self._cancel(batch_id), f"cancel invokeai batch {batch_id}")
            raise
        names = [self._image_name(item) for item in _in_seed_order(items, seeds)]
        return [await self.upstream.content(f"/api/v1/images/i/{quote(name, safe='')}/full") for name in names]

    async def _wait(self, batch_id: str) -> None:
        while True:
            status = await self.upstream.json("GET", f"{QUEUE}/b/{quote(batch_id, safe='')}/status")
            if not isinstance(status, dict) or not all(isinstance(status.get(key), int) for key in UNFINISHED):
                raise self.upstream.malformed("the batch status has no pending/in_progress/waiting counts")
            if not any(status[key] for key in UNFINISHED):
                return
            await asyncio.sleep(self.settings.engine_poll_interval_seconds)

    def _image_name(self, item: Any) -> str:
        if not isinstance(item, dict):
            raise self.upstream.malformed("a queue item is not an object")
        if item.get("status") != "completed":
            error = ": ".join(str(item[key]) for key in ("error_type", "error_message") if item.get(key))
            raise BadGatewayError(
                f"The invokeai queue item {item.get('item_id')} ended {item.get('status')}"
                + (f": {error}" if error else ".")
            )
        try:
            session = item["session"]
            prepared = session["source_prepared_mapping"][OUTPUT]
            name = session["results"][sorted(prepared)[0]]["image"]["image_name"]
        except (TypeError, KeyError, IndexError):
            raise self.upstream.malformed(f"queue item {item.get('item_id')} has no image from node {OUTPUT}") from None
        if not isinstance(name, str) or not name:
            raise self.upstream.malformed(f"queue item {item.get('item_id')} names no image")
        return name

    async def _cancel(self, batch_id: str) -> None:
        await self.upstream.client.put(f"{QUEUE}/cancel_by_batch_ids", json={"batch_ids": [batch_id]}, timeout=5.0)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _in_seed_order(items: list[Any], seeds: tuple[int, ...]) -> list[Any]:
    """Items ordered by the seed in their ``field_values`` (InvokeAI records the value each item got);
    items without one keep their order."""

    def seed_of(item: Any) -> int | None:
        values = item.get("field_values") if isinstance(item, dict) else None
        for value in values if isinstance(values, list) else ():
            if isinstance(value, dict) and value.get("field_name") == "seed" and isinstance(value.get("value"), int):
                return int(value["value"])
        return None

    found = [seed_of(item) for item in items]
    if sorted(s for s in found if s is not None) != sorted(seeds) or None in found:
        return items
    return sorted(items, key=lambda item: seeds.index(seed_of(item) or 0))
