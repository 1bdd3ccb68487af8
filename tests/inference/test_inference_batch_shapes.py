"""The tiny pipeline through the real backend: batch-bucket padding (padded slots never come back),
uint8 conversion on the device (the same bytes as diffusers' own PIL conversion), VAE slicing above the
threshold, and the ``auto`` dtype."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np

from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import EditInput, ImageJob
from kubediffusion.inference.compilecache import CompileCache
from kubediffusion.inference.pipeline import load_backend, resolve_dtype
from kubediffusion.inference.shapes import output_images, set_vae_slicing
from tests.inference.tinyserve import tiny_settings

pytestmark = [pytest.mark.inference, pytest.mark.timeout(180)]


def job(n: int, seed: int, prompt: str = "a cat") -> ImageJob:
    params = GenerationParams(
        prompt=prompt,
        negative_prompt="",
        n=n,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        seed=seed,
        output_format="png",
        output_compression=100,
    )
    return ImageJob(params=params, seeds=tuple(range(seed, seed + n)))


class Recording:
    """Wraps a pipeline, recording how many prompts each call got."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.prompts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.prompts.append(len(kwargs["prompt"]))
        for name in ("generator", "image", "mask_image"):
            assert len(kwargs.get(name, kwargs["prompt"])) == len(kwargs["prompt"])
        return self.pipe(**kwargs)


def test_batches_are_padded_to_a_bucket_and_the_padding_is_dropped(tiny_models: dict[str, Path]) -> None:
    backend = load_backend(tiny_settings(tiny_models["sd"]))
    plain = backend.generate([job(2, 10, "a dog"), job(1, 20)])
    recording = Recording(backend.pipes["txt2img"])
    backend.pipes["txt2img"] = recording
    backend.buckets = (1, 2, 4)
    bucketed = backend.generate([job(2, 10, "a dog"), job(1, 20)])
    assert recording.prompts == [4]  # 3 images padded to the bucket of 4
    assert [len(images) for images in bucketed] == [2, 1]  # the padded slot never comes back
    for before, after in zip(plain, bucketed, strict=True):
        for a, b in zip(before, after, strict=True):
            difference = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
            assert difference.max() <= 2  # the same seeds make the same images (up to kernel rounding)
    backend.generate([job(5, 0)])
    assert recording.prompts[-1] == 5  # larger than every bucket: as is
    backend.close()


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_edit_batches_pad_their_input_images_too(tiny_models: dict[str, Path], kind: str) -> None:
    from PIL import Image

    backend = load_backend(tiny_settings(tiny_models["sd"]))
    recording = Recording(backend.pipes[kind])
    backend.pipes[kind] = recording
    backend.buckets = (1, 2, 4)
    mask = Image.new("L", (64, 64), 255) if kind == "inpaint" else None
    source = EditInput(image=Image.new("RGB", (64, 64), (200, 30, 30)), mask=mask, strength=0.6)
    (images,) = backend.generate([dataclasses.replace(job(3, 7), source=source)])
    assert recording.prompts == [4] and len(images) == 3
    backend.close()


def test_device_conversion_matches_diffusers_pil_conversion() -> None:
    import torch
    from diffusers.image_processor import VaeImageProcessor

    images = torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    expected = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images[:2]))
    converted = output_images(images, 2)
    assert len(converted) == 2
    for ours, theirs in zip(converted, expected, strict=True):
        assert (ours.mode, ours.size) == (theirs.mode, theirs.size) == ("RGB", (24, 16))
        assert ours.tobytes() == theirs.tobytes()


def test_the_vae_is_sliced_above_the_threshold_only(tiny_models: dict[str, Path]) -> None:
    backend = load_backend(tiny_settings(tiny_models["sd"], vae_slicing_pixels=2 * 64 * 64))
    vae = backend.pipe.vae
    backend.generate([job(3, 0)])
    assert vae.use_slicing is True
    backend.generate([job(2, 0)])
    assert vae.use_slicing is False
    assert set_vae_slicing(backend.pipe, 10**9, 0) is False  # 0: never
    backend.close()


def test_auto_dtype_is_bfloat16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("float16", "cuda") == "float16"  # an explicit choice stays


def test_the_compile_cache_uses_torchs_own_api(tmp_path: Path) -> None:
    import torch

    cache = CompileCache(tmp_path, torch.compiler)
    assert cache.save() is False  # nothing compiled in this process: nothing to save, no file
    assert list(tmp_path.iterdir()) == []
    assert cache.path is not None and torch.__version__ in cache.path.name
    cache.path.write_bytes(b"not torch's artifacts")
    assert cache.load() is False  # torch refuses it (checksum); the server compiles from scratch
