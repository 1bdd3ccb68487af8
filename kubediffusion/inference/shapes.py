"""The shapes a pipeline call sees: batch buckets, VAE slicing, and the pipeline's output as images.

**Buckets.** A compiled pipeline (``torch.compile``, static shapes) compiles once per batch shape, so
batches are padded up to the next bucket: 1, 2, 4, 8, … below ``max_batch_size``, and
``max_batch_size`` itself. The warm-up compiles each bucket at the default size before ``/readyz``;
afterwards the compiler runs unseen shapes eagerly instead of recompiling on a live request
(:mod:`.warmup`). Padded slots repeat the batch's last prompt (and input image) with a fixed seed;
their outputs are dropped right after the pipeline call, before anything is converted, checked or
encoded. A job larger than ``max_batch_size`` runs alone, unpadded (an unseen shape: eager).

**VAE slicing.** Above ``vae_slicing_pixels`` (batch x width x height) the VAE decodes one image at a
time, so a batch of large images fits a 24 GB card; below it the decode is one batched call.

**Output.** The pipeline answers tensors in [0, 1] (``output_type="pt"``); they become uint8 on the
device (the same ``round(x * 255)`` diffusers' own PIL conversion does on the CPU, so the bytes are
the same), and only the uint8 pixels cross to the host, where each becomes a PIL image without a copy
of the pixel math. Encoding happens elsewhere (:mod:`.encodepool`), off the pipeline thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)
T = TypeVar("T")


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, … below ``max_batch_size``, then ``max_batch_size`` itself."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch_size)
    return tuple(buckets)


def bucket_for(images: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``images``; ``images`` itself when none does (or no buckets)."""
    return next((bucket for bucket in sorted(buckets) if bucket >= images), images)


def padded(values: list[T], size: int) -> list[T]:
    """``values`` with its last element repeated up to ``size`` entries."""
    return values + [values[-1]] * (size - len(values))


def set_vae_slicing(pipe: Any, pixels: int, threshold: int) -> bool:
    """Slice the VAE decode when ``pixels`` (batch x width x height) exceeds ``threshold`` (0: never);
    returns whether it is sliced. Diffusers' switch is a flag on the VAE module, which every pipeline
    made from this one shares."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_slicing"):
        return False
    sliced = threshold > 0 and pixels > threshold
    if bool(getattr(vae, "use_slicing", False)) != sliced:
        vae.enable_slicing() if sliced else vae.disable_slicing()
    return sliced


def output_images(output: Any, count: int) -> list[Image]:
    """The first ``count`` images of a pipeline's output (the rest are padding), as PIL images."""
    import torch

    if not isinstance(output, torch.Tensor):  # a pipeline that ignores output_type="pt" answers PIL images
        return list(output)[:count]
    from PIL import Image as PILImage

    pixels = output[:count].float().mul(255).round().clamp(0, 255).to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    if array.shape[-1] == 1:
        return [PILImage.fromarray(image[..., 0]) for image in array]
    return [PILImage.fromarray(image) for image in array]
