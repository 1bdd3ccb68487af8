"""Prometheus metrics of one inference server, in a registry per app (names: docs/contracts.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

OUTCOMES = (
    "success",
    "invalid",
    "model_not_found",
    "moderation_blocked",
    "queue_full",
    "not_ready",
    "disconnected",
    "error",
)
MODERATION_ACTIONS = ("reject", "blur")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


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
        self.flagged_images = Counter(
            "kubediffusion_inference_flagged_images",
            "Images the safety checker flagged, by the action taken (reject: left out; blur: blurred).",
            ["action"],
            registry=self.registry,
        )
        for action in MODERATION_ACTIONS:
            self.flagged_images.labels(action)
        self.blocked_prompts = Counter(
            "kubediffusion_inference_blocked_prompts",
            "Requests refused for a blocked term in their prompt, before any GPU work.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "kubediffusion_inference_ready", "1 once the model is loaded and warm.", registry=self.registry
        )
        self.running_images = Gauge(
            "kubediffusion_inference_running_images",
            "Images in the batch being generated (0 between batches).",
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "kubediffusion_inference_request_duration_seconds",
            "Seconds from an image request's arrival to the end of its answer (successful answers; queueing included).",
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "kubediffusion_inference_load_seconds",
            "Seconds loading the model took (weights onto the device, speed-ups applied); with another engine, "
            "until its first good health check. 0 until loaded.",
            registry=self.registry,
        )
        self.compile_seconds = Gauge(
            "kubediffusion_inference_compile_seconds",
            "Seconds the warm-up of a compiled pipeline took (torch.compile compiles each batch bucket, with and "
            "without CFG, then; less with a warm compile cache); 0 without compile.",
            registry=self.registry,
        )
        self.gpu_memory = GpuMemory()
        self.registry.register(self.gpu_memory)

    def render(self) -> bytes:
        result: bytes = generate_latest(self.registry)
        return result


class GpuMemory(Collector):
    """``kubediffusion_inference_gpu_memory_bytes{kind="used"|"total"}`` of the model's accelerator, read at
    each scrape from ``source`` (``(free, total)`` bytes; None, or no source, on CPU: no series)."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[int, int] | None] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        try:
            reading = self.source() if self.source is not None else None
        except Exception:  # a failing device query must not fail the whole scrape
            reading = None
        if reading is not None:
            free, total = reading
            family.add_metric(["used"], total - free)
            family.add_metric(["total"], total)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "kubediffusion_inference_gpu_memory_bytes",
            "Accelerator memory in bytes: used (by every process on the device) and total.",
            labels=["kind"],
        )
