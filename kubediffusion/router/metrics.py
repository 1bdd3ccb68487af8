"""Prometheus metrics of one router app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
