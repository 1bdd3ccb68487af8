"""Prometheus metrics of one inference server, in a registry per app (names: docs/contracts.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = ("success", "invalid", "model_not_found", "queue_full", "not_ready", "disconnected", "error")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class InferenceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kubediffusion_inference_requests",
            "Image generation requests by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.queue_depth = Gauge(
            "kubediffusion_inference_queue_depth",
            "Images waiting for the pipeline (not the running batch).",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kubediffusion_inference_batch_size",
            "Images per pipeline call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "kubediffusion_inference_step_seconds",
            "Seconds per denoising step (whole batch).",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("kubediffusion_inference_images", "Images generated.", registry=self.registry)
        self.ready = Gauge(
            "kubediffusion_inference_ready", "1 once the model is loaded and warm.", registry=self.registry
        )

    def render(self) -> bytes:
        result: bytes = generate_latest(self.registry)
        return result
