"""A fake ImageBackend and test settings for the inference unit tests (no torch, no model)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from kubediffusion.inference.backend import BackendDescription, ImageJob, StepCallback, TaskKind
from kubediffusion.inference.settings import InferenceSettings


class FakeBackend:
    """Solid-colour images whose colour is a function of the seed (for edits, a blend with the input's
    colour); can hold the worker on a gate; makes ``partial_images`` previews (1/8 size, grey levels
    0, 1, 2, ...) for jobs that want them, after as many fake steps."""

    def __init__(self) -> None:
        self.all_calls: list[list[ImageJob]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.closed = False

    @property
    def description(self) -> BackendDescription:
        return BackendDescription(
            pipeline_class="FakePipeline",
            device="cpu",
            dtype="float32",
            edit_kinds=self.edit_kinds,
            previews="fake",
        )

    edit_kinds: tuple[TaskKind, ...] = ("img2img", "inpaint")

    def generate(self, jobs: Sequence[ImageJob], on_step: StepCallback | None = None) -> list[list[Image.Image]]:
        self.all_calls.append(list(jobs))
        self.running.set()
        assert self.gate.wait(10)
        self.running.clear()
        for _ in range(jobs[0].params.steps):
            if on_step is not None:
                on_step(0.001)
        for job in jobs:
            small = (max(1, job.params.width // 8), max(1, job.params.height // 8))
            for index in range(job.params.partial_images if job.on_partial is not None else 0):
                for image in range(len(job.seeds)):
                    job.on_partial(image, index, Image.new("RGB", small, (index, index, index)))  # type: ignore[misc]
        return [[self._image(job, seed) for seed in job.seeds] for job in jobs]

    @staticmethod
    def _image(job: ImageJob, seed: int) -> Image.Image:
        size = (job.params.width, job.params.height)
        if job.source is None:
            return Image.new("RGB", size, (seed % 256, 7, 9))
        assert job.source.image.size == size and (job.source.mask is None or job.source.mask.size == size)
        red = job.source.image.getpixel((0, 0))[0]  # type: ignore[index]
        return Image.new("RGB", size, (seed % 256, red, 200 if job.source.mask is not None else 100))

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


class FlaggingBackend(FakeBackend):
    """A FakeBackend with a safety checker that flags images of odd seeds; its images are two-tone (left
    half the seed's colour, right half white) so a blur shows. Records each checker call's image count."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[int] = []

    @property
    def description(self) -> BackendDescription:
        return dataclasses.replace(super().description, safety_checker="FakeChecker")

    @staticmethod
    def _image(job: ImageJob, seed: int) -> Image.Image:
        image = FakeBackend._image(job, seed)
        image.paste((255, 255, 255), (image.width // 2, 0, image.width, image.height))
        return image

    def flag_unsafe(self, images: list[Image.Image]) -> list[bool]:
        self.checked.append(len(images))
        return [bool(image.getpixel((0, 0))[0] % 2) for image in images]  # type: ignore[index]
