"""The autoscaler's task: every interval, sample each autoscaled model's demand, decide, act.

It runs in the operator's event loop beside kopf's handlers and shares nothing with a reconcile: API
calls go to a worker thread and scrapes are async and bounded (:mod:`.demand`), so a slow pod delays
the next sample, never a reconcile. It writes two things: spec.replicas through the ImageModel's scale
subresource, with the resourceVersion it decided on (a router waking the model in between makes that a
409, and the next pass decides again on fresh data), and status.autoscaling under its own field manager.
The reconcile applies spec.replicas to the Deployment as it applies any ``/scale`` write, and an Event
names each change and its reason (posted through the API gateway: ``kopf.event`` works in handlers only).

The history of samples lives in memory: after a restart, scale-downs wait for a full delay of fresh
samples (:func:`~.decision.decide`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.resource import KIND
from kubediffusion.imagemodel.spec import ImageModelSpec, InvalidSpecError
from kubediffusion.imagemodel.status import AutoscalingStatus, ImageModelStatus
from kubediffusion.operator.autoscaler.decision import Decision, Policy, Sample, decide
from kubediffusion.operator.autoscaler.demand import (
    ROUTER_PORT,
    ModelKey,
    RouterDemand,
    Scraper,
    metrics_url,
    pod_demand,
    router_demand,
    sum_routers,
)
from kubediffusion.operator.kube import Kube, KubeError, Obj
from kubediffusion.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

STATUS_REFRESH_SECONDS = 30.0  # status.autoscaling.load is refreshed at most this often (decisions at once)
INFERENCE_PODS = {"app.kubernetes.io/managed-by": names.FIELD_MANAGER, names.COMPONENT_LABEL: "inference"}


@dataclass
class _Memory:
    samples: deque[Sample] = field(default_factory=deque)
    written: tuple[int, str, str | None] | None = None  # desired, reason, lastScaleTime last written
    written_at: float = float("-inf")


@dataclass(frozen=True)
class _World:
    models: list[Obj]
    pod_urls: dict[ModelKey, list[str]]
    router_urls: list[str]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Autoscaler:
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        scraper: Scraper,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = utc_now,
    ) -> None:
        self.kube, self.settings, self.scraper = kube, settings, scraper
        self.clock, self.wall = clock, wall
        self.memory: dict[ModelKey, _Memory] = {}

    async def run(self) -> None:
        """Until cancelled: a failed pass is logged and the next one starts on time."""
        interval = self.settings.autoscale_interval_seconds
        while True:
            started = self.clock()
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler pass failed")
            await asyncio.sleep(max(0.0, interval - (self.clock() - started)))

    async def tick(self) -> None:
        world = await asyncio.to_thread(self._read)
        pod_urls = [url for urls in world.pod_urls.values() for url in urls]
        pages = await self.scraper.fetch_all([*pod_urls, *world.router_urls])
        routers = sum_routers(router_demand(pages[u] or "") for u in world.router_urls)
        now = self.clock()
        keys = set()
        for body in world.models:
            meta = body["metadata"]
            key = (meta["namespace"], meta["name"])
            keys.add(key)
            pods = [pod_demand(pages[u] or "") for u in world.pod_urls.get(key, [])]
            demand = sum(d for d in pods if d is not None)
            await self._model(body, now, demand, routers.get(key, RouterDemand()))
        for gone in set(self.memory) - keys:
            del self.memory[gone]

    def _read(self) -> _World:
        models: list[Obj] = []
        pod_urls: dict[ModelKey, list[str]] = {}
        for namespace in self.settings.namespaces or [""]:
            models += self.kube.list(KIND, namespace, {})
            for pod in self.kube.list("Pod", namespace, INFERENCE_PODS):
                url = metrics_url(pod, names.PORT)
                model = (pod["metadata"].get("labels") or {}).get(names.MODEL_LABEL)
                if url is not None and model:
                    pod_urls.setdefault((pod["metadata"]["namespace"], model), []).append(url)
        router_urls: list[str] = []
        if self.settings.router_labels:
            for pod in self.kube.list("Pod", self.settings.router_namespace, self.settings.router_labels):
                url = metrics_url(pod, ROUTER_PORT)
                if url is not None:
                    router_urls.append(url)
        return _World(models, pod_urls, router_urls)

    async def _model(self, body: Obj, now: float, pods: float, routers: RouterDemand) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if meta.get("deletionTimestamp"):
            return
        try:
            spec = ImageModelSpec.from_body(body)
        except InvalidSpecError:
            return  # the reconcile reports it
        policy = Policy.of(spec)
        previous = ImageModelStatus.parse(body.get("status")).autoscaling
        if policy is None:
            self.memory.pop(key, None)
            if previous is not None:
                await asyncio.to_thread(self.kube.apply_autoscaling_status, *key, None)
            return
        memory = self.memory.setdefault(key, _Memory())
        if memory.written is None and previous is not None:
            memory.written = (previous.desired_replicas, previous.reason, previous.last_scale_time)
        settings = self.settings
        memory.samples.append(Sample(now, max(pods, routers.inflight) + routers.held, int(routers.held)))
        keep = settings.autoscale_window_seconds + max(policy.scale_down_delay, policy.idle_before_zero)
        while memory.samples and memory.samples[0].at < now - keep - 2 * settings.autoscale_interval_seconds:
            memory.samples.popleft()
        current = spec.desired_replicas
        decision = decide(memory.samples, current, policy, now=now, window=settings.autoscale_window_seconds)
        last_scale = memory.written[2] if memory.written is not None else None
        if decision.replicas != current or spec.replicas is None:
            if not await self._scale(body, decision.replicas):
                return
            if decision.replicas != current:
                last_scale = self.wall()
                message = f"{current} -> {decision.replicas} replica(s): {decision.message}"
                log.info("%s/%s: %s", *key, message)
                try:
                    await asyncio.to_thread(self.kube.post_event, body, "Normal", decision.reason, message)
                except KubeError as exc:  # the decision stands; only its Event is lost
                    log.warning("%s/%s: event not posted: %s", *key, exc)
        await self._report(key, memory, decision, last_scale, now)

    async def _scale(self, body: Obj, replicas: int) -> bool:
        meta = body["metadata"]
        try:
            await asyncio.to_thread(
                self.kube.scale, meta["namespace"], meta["name"], replicas, resource_version=meta["resourceVersion"]
            )
        except KubeError as exc:
            if exc.status >= 500:
                raise
            # 409: changed since it was read (e.g. a router woke it); 422: outside the bounds just edited.
            log.info("%s/%s: not scaled to %d (%s); deciding again", meta["namespace"], meta["name"], replicas, exc)
            return False
        return True

    async def _report(
        self, key: ModelKey, memory: _Memory, decision: Decision, last_scale: str | None, now: float
    ) -> None:
        written = (decision.replicas, decision.reason, last_scale)
        if written == memory.written and now - memory.written_at < STATUS_REFRESH_SECONDS:
            return
        status = AutoscalingStatus(
            desired_replicas=decision.replicas,
            load=round(decision.load, 2),
            reason=decision.reason,
            message=decision.message,
            last_scale_time=last_scale,
        )
        wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        await asyncio.to_thread(self.kube.apply_autoscaling_status, *key, wire)
        memory.written, memory.written_at = written, now


async def run_autoscaler(kube: Kube, settings: OperatorSettings) -> None:
    """The autoscaler with its own HTTP client for scrapes, until cancelled."""
    timeout = httpx.Timeout(settings.metrics_timeout_seconds)
    limits = httpx.Limits(max_connections=settings.metrics_concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False) as client:
        scraper = Scraper(client, timeout=settings.metrics_timeout_seconds, concurrency=settings.metrics_concurrency)
        await Autoscaler(kube, settings, scraper).run()
