"""Prometheus metrics of one router app (own registry, so several apps can live in one process).

Two gauges are a contract with the operator's autoscaler (docs/contracts.md), per model and namespace:
``kubediffusion_router_inflight_requests`` (sent to a pod of the model and not finished: from the
forward until the pod's answer has been read, or its stream relayed, to the end or abandoned) and
``kubediffusion_router_held_requests`` (waiting for a pod of a model that scales from zero).

Usage per tenant and model (:mod:`.usage`; docs/observability.md): ``kubediffusion_router_usage_*_total``,
counted when a request succeeds (requests, images, megapixels, denoising steps, GPU-seconds), and
``kubediffusion_router_usage_failed_requests_total{tenant,model,code}`` for the image requests of a known
tenant that did not (never billed); refusals for a spent quota are ``kubediffusion_router_quota_refusals_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubediffusion.router.routing import ModelEntry

PER_MODEL = ("model", "namespace")
PER_TENANT = ("tenant", "model")


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "kubediffusion_router_requests_total",
            "Image requests answered (generations, edits, variations, /imagine/generate)",
            ["model", "code"],
            registry=self.registry,
        )
        self.upstream_attempts = Counter(
            "kubediffusion_router_upstream_attempts_total",
            "Requests sent to pods, by outcome (HTTP status or error)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubediffusion_router_request_duration_seconds",
            "Time to the start of the response",
            ["model"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.images_stored = Counter(
            "kubediffusion_router_images_stored_total",
            "Images stored (url responses, store: true)",
            registry=self.registry,
        )
        self.models = Gauge("kubediffusion_router_models", "Models known to discovery", registry=self.registry)
        self.ready_endpoints = Gauge(
            "kubediffusion_router_ready_endpoints", "Ready pod endpoints, all models", registry=self.registry
        )
        self.inflight = Gauge(
            "kubediffusion_router_inflight_requests",
            "Requests sent to a pod of the model and not finished (streams included)",
            PER_MODEL,
            registry=self.registry,
        )
        self.held = Gauge(
            "kubediffusion_router_held_requests",
            "Requests waiting for a pod of a model that scales from zero",
            PER_MODEL,
            registry=self.registry,
        )
        self.wakeups = Counter(
            "kubediffusion_router_wakeups_total",
            "Wake-ups of models at zero replicas, by outcome (scaled, awake: it had replicas already, failed)",
            [*PER_MODEL, "outcome"],
            registry=self.registry,
        )
        self.wake_duration = Histogram(
            "kubediffusion_router_wake_seconds",
            "From the first request held for a model at zero to its /scale write",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

        self.usage_requests = self._usage("requests", "Image requests that succeeded")
        self.usage_images = self._usage("images", "Images delivered")
        self.usage_megapixels = self._usage("megapixels", "Megapixels of the images delivered")
        self.usage_steps = self._usage("denoising_steps", "Denoising steps of the images delivered (steps x images)")
        self.usage_gpu_seconds = self._usage("gpu_seconds", "Compute seconds the model pods reported")
        self.usage_failed = Counter(
            "kubediffusion_router_usage_failed_requests_total",
            "Image requests of a known tenant that delivered no image (never billed), by status code",
            [*PER_TENANT, "code"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "kubediffusion_router_quota_refusals_total",
            "Requests refused because the tenant's daily image quota was spent",
            ["tenant"],
            registry=self.registry,
        )

    def _usage(self, what: str, documentation: str) -> Counter:
        return Counter(f"kubediffusion_router_usage_{what}_total", documentation, PER_TENANT, registry=self.registry)

    def sent(self, model: ModelEntry) -> Callable[[], None]:
        """One request more in flight to ``model``; call what it returns when it is finished (once)."""
        gauge = self.inflight.labels(model=model.name, namespace=model.namespace)
        gauge.inc()
        return gauge.dec

    def per_model(self, models: Iterable[ModelEntry]) -> None:
        """Every known model gets its series (0 until used); series of models gone are dropped once at 0."""
        known = {model.key for model in models}
        for gauge in (self.inflight, self.held):
            for namespace, name in known:
                gauge.labels(model=name, namespace=namespace)
            for sample in [s for metric in gauge.collect() for s in metric.samples]:
                key = (sample.labels["namespace"], sample.labels["model"])
                if key not in known and sample.value == 0:
                    gauge.remove(sample.labels["model"], sample.labels["namespace"])
