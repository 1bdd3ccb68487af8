"""Demand as the model pods and the routers report it: which pods to ask, and what their ``/metrics`` say.

Model pods (docs/contracts.md): ``kubediffusion_inference_queue_depth`` (images waiting) and
``kubediffusion_inference_running_images`` (images in the running batch; a server that does not export
it yet counts its queue alone), on the container port named ``http``. Routers:
``kubediffusion_router_inflight_requests`` and ``kubediffusion_router_held_requests``, each with labels
``model`` (the ImageModel's name) and ``namespace``, on their port named ``http`` (8080 without one).

Scrapes are bounded: each has a timeout and reads at most :data:`MAX_BODY` bytes, and at most
``concurrency`` run at once. Only ready pods with an address are asked. A pod that does not answer, or
answers something that does not parse, counts as nothing this round: demand it had returns with the
next sample, and a scale-down waits for ``scaleDownDelaySeconds`` of lower samples anyway. The pods run
images a model's author chose, so what they answer is parsed as data and nothing more (it can only move
a model within its own minReplicas..maxReplicas).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kubediffusion.imagemodel import names

log = logging.getLogger(__name__)

QUEUE_DEPTH = "kubediffusion_inference_queue_depth"
RUNNING_IMAGES = "kubediffusion_inference_running_images"
ROUTER_INFLIGHT = "kubediffusion_router_inflight_requests"
ROUTER_HELD = "kubediffusion_router_held_requests"
ROUTER_PORT = 8080
MAX_BODY = 1 << 20  # a /metrics page of ours is a few KiB

ModelKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class RouterDemand:
    inflight: float = 0.0
    held: float = 0.0


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and bool(status.get("podIP")) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def metrics_url(pod: Mapping[str, Any], default_port: int) -> str | None:
    """``http://<podIP>:<port named http>/metrics`` of a ready pod, else None."""
    if not _ready(pod):
        return None
    containers = (pod.get("spec") or {}).get("containers") or []
    ports = [p for c in containers for p in c.get("ports") or [] if p.get("name") == names.PORT_NAME]
    port = ports[0].get("containerPort", default_port) if ports else default_port
    ip = pod["status"]["podIP"]
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def _gauges(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        out += [(sample.name, dict(sample.labels), float(sample.value)) for sample in family.samples]
    return out


def pod_demand(text: str) -> float | None:
    """Queued + running images of one model pod, None when the page does not parse."""
    try:
        samples = _gauges(text)
    except ValueError:
        return None
    values = {name: value for name, _, value in samples if name in (QUEUE_DEPTH, RUNNING_IMAGES)}
    if QUEUE_DEPTH not in values:
        return None
    return max(0.0, values[QUEUE_DEPTH]) + max(0.0, values.get(RUNNING_IMAGES, 0.0))


def router_demand(text: str) -> dict[ModelKey, RouterDemand]:
    """In-flight and held requests per model at one router (empty when the page does not parse)."""
    try:
        samples = _gauges(text)
    except ValueError:
        return {}
    found: dict[ModelKey, RouterDemand] = {}
    for name, labels, value in samples:
        if name not in (ROUTER_INFLIGHT, ROUTER_HELD) or "model" not in labels:
            continue
        key = (labels.get("namespace", ""), labels["model"])
        seen = found.get(key, RouterDemand())
        if name == ROUTER_INFLIGHT:
            found[key] = RouterDemand(seen.inflight + max(0.0, value), seen.held)
        else:
            found[key] = RouterDemand(seen.inflight, seen.held + max(0.0, value))
    return found


def sum_routers(pages: Iterable[Mapping[ModelKey, RouterDemand]]) -> dict[ModelKey, RouterDemand]:
    total: dict[ModelKey, RouterDemand] = {}
    for page in pages:
        for key, demand in page.items():
            seen = total.get(key, RouterDemand())
            total[key] = RouterDemand(seen.inflight + demand.inflight, seen.held + demand.held)
    return total


class Scraper:
    """GET many ``/metrics`` pages at once, within a timeout, a size limit and a concurrency limit."""

    def __init__(self, client: httpx.AsyncClient, *, timeout: float, concurrency: int) -> None:
        self.client = client
        self.timeout = timeout  # for the whole scrape: a page that trickles in is cut off too
        self._slots = asyncio.Semaphore(concurrency)

    async def fetch(self, url: str) -> str | None:
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout), self.client.stream("GET", url) as response:
                    if response.status_code != 200:
                        return None
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY:
                            log.warning("%s: metrics page over %d bytes, ignored", url, MAX_BODY)
                            return None
                    return body.decode("utf-8", errors="replace")
            except (httpx.HTTPError, TimeoutError) as exc:
                log.debug("scrape of %s failed: %r", url, exc)
                return None

    async def fetch_all(self, urls: Sequence[str]) -> dict[str, str | None]:
        pages = await asyncio.gather(*(self.fetch(url) for url in urls))
        return dict(zip(urls, pages, strict=True))
