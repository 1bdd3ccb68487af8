"""How long the pipeline thread is held by encoding, before (PNG level 6, in the pipeline thread) and
after (PNG level 1, handed to the encoding pool), for one batch of 1024² images; CPU only.

    python bench/bench_encode.py [--size 1024] [--batch 4] [--rounds 3]

The images are smooth gradients with mild noise (a photo compresses like this; the tiny model's random
noise would not compress at all). Measured per batch, best of ``--rounds``:
  before      the pipeline thread encodes each image at level 6 (the old path)
  level1      the same thread at level 1 (the new default level, no pool)
  pool        ``EncodePool.submit`` at level 1: the pipeline thread's time (the hand-off), and the time
              until the last image is encoded (the answer's latency), 2 threads
Prints a table (ms, images/s, bytes per image), then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.encodepool import EncodePool
from kubediffusion.inference.encoding import encode_image
from kubediffusion.inference.moderation import Moderated


def photo_like(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(6 * x + seed) * 60 + 120 + 50 * y, np.cos(4 * y) * 70 + 100, 80 * x * y + 90]
    image = np.stack(channels, axis=-1) + rng.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def best(rounds: int, fn: Any) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = [photo_like(args.size, seed) for seed in range(args.batch)]
    params = GenerationParams(
        prompt="x",
        negative_prompt="",
        n=args.batch,
        width=args.size,
        height=args.size,
        steps=1,
        guidance=0.0,
        seed=0,
        output_format="png",
        output_compression=100,
    )
    job = ImageJob(params=dataclasses.replace(params), seeds=tuple(range(args.batch)))
    before = best(args.rounds, lambda: [encode_image(image, "png", png_level=6) for image in images])
    level1 = best(args.rounds, lambda: [encode_image(image, "png", png_level=1) for image in images])
    pool = EncodePool(png_level=1)
    handoffs: list[float] = []

    def pooled() -> None:
        started = time.perf_counter()
        (future,) = pool.submit([job], [Moderated(images)])
        handoffs.append(time.perf_counter() - started)
        future.result()

    pooled()  # threads started
    handoffs.clear()
    latency = best(args.rounds, pooled)
    pool.shutdown()
    sizes = {level: len(encode_image(images[0], "png", png_level=level)) for level in (1, 6)}
    rows = {
        "before_level6_in_thread": {"pipeline_thread_ms": before * 1000, "answer_ms": before * 1000},
        "level1_in_thread": {"pipeline_thread_ms": level1 * 1000, "answer_ms": level1 * 1000},
        "level1_pool": {"pipeline_thread_ms": min(handoffs) * 1000, "answer_ms": latency * 1000},
    }
    print(f"batch of {args.batch} {args.size}x{args.size} PNG images (best of {args.rounds}):")
    for name, row in rows.items():
        row["images_per_s"] = args.batch / (row["answer_ms"] / 1000)
        print(
            f"  {name:<24} pipeline thread held {row['pipeline_thread_ms']:8.1f} ms   "
            f"answer after {row['answer_ms']:8.1f} ms   {row['images_per_s']:6.1f} images/s"
        )
    print(f"  bytes per image: level 6 {sizes[6]}, level 1 {sizes[1]} ({sizes[1] / sizes[6]:.2f}x)")
    result = {
        "bench": "encode",
        "size": args.size,
        "batch": args.batch,
        "rows": {name: {key: round(value, 2) for key, value in row.items()} for name, row in rows.items()},
        "bytes_per_image": sizes,
        "pipeline_thread_speedup": round(before / min(handoffs), 1),
        "answer_speedup": round(before / latency, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
