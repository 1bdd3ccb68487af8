"""A fake ImageBackend and test settings for the inference unit tests (no torch, no model)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from kubediffusion.inference.backend import BackendDescription, ImageJob, StepCallback
from kubediffusion.inference.settings import InferenceSettings


class FakeBackend:
    """Solid-colour images whose colour is a function of the seed; can hold the worker on a gate."""

    def __init__(self) -> None:
        self.all_calls: list[list[ImageJob]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.closed = False

    @property
    def description(self) -> BackendDescription:
        return BackendDescription(pipeline_class="FakePipeline", device="cpu", dtype="float32")

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        self.all_calls.append(list(jobs))
        self.running.set()
        assert self.gate.wait(10)
        self.running.clear()
        for _ in range(jobs[0].params.steps):
            if on_step is not None:
                on_step(0.001)
        return [
            [Image.new("RGB", (job.params.width, job.params.height), (seed % 256, 7, 9)) for seed in job.seeds]
            for job in jobs
        ]

    @property
    def calls(self) -> list[list[ImageJob]]:
        """Calls after the warm-up image."""
        return [call for call in self.all_calls if call[0].params.prompt != "warm-up"]

    def vram(self) -> tuple[int, int] | None:
        return None

    def close(self) -> None:
        self.closed = True


def settings_for(tmp_path: Path, **overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "model_dir": tmp_path,
        "model_name": "tiny",
        "aliases": ["dall-e-2"],
        "batch_window_ms": 30,
        "defaults": {"size": "64x64", "steps": 2},
        "limits": {"minSize": 64, "maxSize": 256, "maxN": 4},
    }
    values.update(overrides)
    return InferenceSettings(**values)
