"""A fake InvokeAI (invokeai/app/api/routers/session_queue.py, images.py, model_manager.py, app_info.py).

``enqueue_batch`` takes ``{"batch": Batch, "prepend": bool}`` and checks it as InvokeAI's ``Batch``
validators do (every edge joins existing nodes, every ``data`` item names a node and a field of it,
zipped items of one length, each node a known invocation type with its required inputs connected or
set); it makes one queue item per seed, which completes ``delay_s`` later. Batch status, queue items
(``session.source_prepared_mapping`` and ``session.results``, ``field_values``), full images and
``cancel_by_batch_ids`` answer InvokeAI's shapes; errors are FastAPI's ``{"detail": ...}``."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse, Response

from tests.engines.upstream import Behaviour, broken_answer, png, seed_colour

MODEL_KEY = "5a1b9c40-fake-sd15"
RECORDS = {
    MODEL_KEY: {"key": MODEL_KEY, "hash": "blake3:fake", "name": "fake-sd15", "base": "sd-1", "type": "main"},
    "fake-sdxl": {"key": "fake-sdxl", "hash": "blake3:fake2", "name": "fake-sdxl", "base": "sdxl", "type": "main"},
}
# invocation type -> inputs that must be set or connected (the rest have defaults)
NODES: dict[str, set[str]] = {
    "main_model_loader": {"model"},
    "sdxl_model_loader": {"model"},
    "compel": {"clip"},
    "sdxl_compel_prompt": {"clip", "clip2"},
    "noise": set(),
    "denoise_latents": {"positive_conditioning", "negative_conditioning", "unet"},
    "l2i": {"latents", "vae"},
}


def invalid(message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", "batch"], "msg": message, "type": "value_error"}]}, 422)


def check_batch(batch: dict[str, Any]) -> str | None:
    graph = batch.get("graph", {})
    nodes: dict[str, Any] = graph.get("nodes", {})
    connected = {(edge["destination"]["node_id"], edge["destination"]["field"]) for edge in graph.get("edges", [])}
    for edge in graph.get("edges", []):
        for end in ("source", "destination"):
            if edge[end]["node_id"] not in nodes:
                return f"Value error, edge {end} {edge[end]['node_id']} is not a node of the graph"
    for node_id, node in nodes.items():
        if node.get("id") != node_id or node.get("type") not in NODES:
            return f"Value error, node {node_id} has an unknown type or a wrong id"
        for required in NODES[node["type"]]:
            if required not in node and (node_id, required) not in connected:
                return f"Value error, node {node_id} ({node['type']}) lacks {required}"
    for data in batch.get("data") or []:
        if len({len(datum["items"]) for datum in data}) > 1:
            return "Value error, Zipped batch items must all have the same length"
        for datum in data:
            node = nodes.get(datum["node_path"])
            if node is None:
                return f"Node {datum['node_path']} not found in graph"
            if datum["field_name"] not in {"seed", "width", "height", "prompt", "steps"}:
                return f"Field {datum['field_name']} not found in node {datum['node_path']}"
    return None


def app(behaviour: Behaviour) -> FastAPI:
    api = FastAPI()
    items: dict[int, dict[str, Any]] = {}
    images: dict[str, bytes] = {}
    counter = iter(range(1, 1_000_000))

    @api.get("/api/v1/app/version")
    async def version() -> Response:
        if not behaviour.healthy:
            return JSONResponse({"detail": "starting"}, status_code=503)
        return JSONResponse({"version": "6.0.0-fake"})

    @api.get("/api/v2/models/i/{key}")
    async def model(key: str) -> Response:
        if key not in RECORDS:
            return JSONResponse({"detail": f"Model with key {key} not found"}, status_code=404)
        return JSONResponse(RECORDS[key])

    @api.post("/api/v1/queue/{queue_id}/enqueue_batch")
    async def enqueue(
        queue_id: str, batch: Annotated[dict[str, Any], Body()], prepend: Annotated[bool, Body()] = False
    ) -> Response:
        behaviour.requests.append(batch)
        if (broken := await broken_answer(behaviour)) is not None:
            return broken
        if behaviour.failure == "4xx" or (problem := check_batch(batch)) is not None:
            return invalid("Value error, the fake refuses this batch" if behaviour.failure == "4xx" else problem)
        batch_id = str(uuid.uuid4())
        graph = batch["graph"]
        (output,) = [node_id for node_id, node in graph["nodes"].items() if node["type"] == "l2i"]
        noise = next(node for node in graph["nodes"].values() if node["type"] == "noise")
        ids = []
        for seed in batch["data"][0][0]["items"]:
            item_id = next(counter)
            ids.append(item_id)
            items[item_id] = {
                "item_id": item_id,
                "batch_id": batch_id,
                "queue_id": queue_id,
                "session_id": str(uuid.uuid4()),
                "ready_at": time.monotonic() + behaviour.delay_s,
                "failed": behaviour.failure == "job_failed",
                "output": output,
                "seed": seed,
                "size": (noise["width"], noise["height"]),
                "field_values": [{"node_path": "kd_noise", "field_name": "seed", "value": seed}],
            }
        return JSONResponse(
            {
                "queue_id": queue_id,
                "enqueued": len(ids),
                "requested": len(ids),
                "batch": {**batch, "batch_id": batch_id},
                "priority": 0,
                "item_ids": ids,
            }
        )

    def status_of(item: dict[str, Any]) -> str:
        if item["batch_id"] in behaviour.cancelled:
            return "canceled"
        if time.monotonic() < item["ready_at"]:
            return "in_progress"
        return "failed" if item["failed"] else "completed"

    @api.get("/api/v1/queue/{queue_id}/b/{batch_id}/status")
    async def batch_status(queue_id: str, batch_id: str) -> Response:
        statuses = [status_of(item) for item in items.values() if item["batch_id"] == batch_id]
        counts = {
            name: statuses.count(name)
            for name in ("pending", "in_progress", "waiting", "completed", "failed", "canceled")
        }
        return JSONResponse(
            {
                "queue_id": queue_id,
                "batch_id": batch_id,
                "origin": "kubediffusion",
                "destination": None,
                **counts,
                "total": len(statuses),
            }
        )

    @api.get("/api/v1/queue/{queue_id}/i/{item_id}")
    async def queue_item(queue_id: str, item_id: int) -> Response:
        item = items.get(item_id)
        if item is None:
            return JSONResponse({"detail": f"Queue item with id {item_id} not found in queue {queue_id}"}, 404)
        status = status_of(item)
        session: dict[str, Any] = {"id": item["session_id"], "results": {}, "source_prepared_mapping": {}, "errors": {}}
        answer = {key: item[key] for key in ("item_id", "batch_id", "queue_id", "session_id", "field_values")}
        answer |= {
            "status": status,
            "session": session,
            "created_at": "2026-01-01T00:00:00",
            "updated_at": "2026-01-01",
        }
        if status == "completed":
            name = f"{item['session_id']}.png"
            images.setdefault(name, png(*item["size"], seed_colour(item["seed"])))
            prepared = f"{item['output']}-prepared"
            session["source_prepared_mapping"] = {item["output"]: [prepared]}
            session["results"] = {
                prepared: {
                    "type": "image_output",
                    "image": {"image_name": name},
                    "width": item["size"][0],
                    "height": item["size"][1],
                }
            }
        if status == "failed":
            answer |= {"error_type": "OutOfMemoryError", "error_message": "CUDA out of memory (fake)"}
        return JSONResponse(answer)

    @api.get("/api/v1/images/i/{image_name}/full")
    async def full(image_name: str) -> Response:
        if image_name not in images:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return Response(images[image_name], media_type="image/png")

    @api.put("/api/v1/queue/{queue_id}/cancel_by_batch_ids")
    async def cancel(queue_id: str, batch_ids: Annotated[list[str], Body(embed=True)]) -> Response:
        behaviour.cancelled.extend(batch_ids)
        await asyncio.sleep(0)
        return JSONResponse({"canceled": len(batch_ids)})

    return api
