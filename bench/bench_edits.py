"""Edit throughput (images/s) with dynamic batching on vs off, tiny model on CPU, side by side in one run.

    python bench/bench_edits.py [--seconds 3] [--rounds 2] [--concurrency 1 4 8] [--mask] [--model-dir DIR]

Like bench_batching.py, for ``POST /v1/images/edits``: both servers are the real inference app (multipart
parsing, image checks and decoding, the image-to-image pipeline made by ``from_pipe``, batcher, encoding)
called in-process through httpx.ASGITransport. "off" is max_batch_size=1; "on" is max_batch_size=8
with a 20 ms window. Every request edits the same 128x128 PNG at strength 0.75 (so they share a batch
key), each with its own seed; ``--mask`` makes them inpainting requests instead. Cells alternate off/on
per concurrency and per round; each is a closed loop of ``concurrency`` clients for ``--seconds``.
Prints a table of images/s and on/off ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from PIL import Image

from kubediffusion.api.multipart import FormPart, encode_multipart
from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import write_tiny_pipeline

MODES = {"off": {"max_batch_size": 1, "batch_window_ms": 0}, "on": {"max_batch_size": 8, "batch_window_ms": 20}}
SIZE = (128, 128)
STEPS = 8


def png(mode: str, hole: bool = False) -> bytes:
    image = Image.new(mode, SIZE, (180, 90, 40, 255)[: len(mode)])
    if hole:
        image.paste((0, 0, 0, 0), (0, 0, SIZE[0] // 2, SIZE[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def edit_body(seed: int, mask: bool) -> tuple[bytes, str]:
    parts = [
        FormPart("image", png("RGB"), "in.png", "image/png"),
        FormPart("prompt", b"a red barn in the snow"),
        FormPart("seed", str(seed).encode()),
        FormPart("num_inference_steps", str(STEPS).encode()),
        FormPart("guidance_scale", b"5"),
    ]
    if mask:
        parts.append(FormPart("mask", png("RGBA", hole=True), "mask.png", "image/png"))
    else:
        parts.append(FormPart("strength", b"0.75"))
    return encode_multipart(parts)


async def measure(client: httpx.AsyncClient, concurrency: int, seconds: float, mask: bool) -> float:
    """Closed loop: ``concurrency`` clients, each sending the next edit when the last one returns."""
    done = 0
    seeds = itertools.count()
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            body, content_type = edit_body(next(seeds), mask)
            response = await client.post("/v1/images/edits", content=body, headers={"content-type": content_type})
            response.raise_for_status()
            done += len(response.json()["data"])

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def run(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    results: dict[str, dict[int, list[float]]] = {mode: {c: [] for c in args.concurrency} for mode in MODES}
    apps = {}
    for mode, serving in MODES.items():
        settings = InferenceSettings(
            model_dir=model_dir,
            model_name="tiny",
            device="cpu",
            dtype="float32",
            max_queue=64,
            defaults={"size": "64x64", "steps": 4},
            limits={"minSize": 64, "maxSize": 256},
            **serving,
        )
        apps[mode] = create_app(settings)
    async with apps["off"].router.lifespan_context(apps["off"]), apps["on"].router.lifespan_context(apps["on"]):
        clients = {
            mode: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=120)
            for mode, app in apps.items()
        }
        deadline = time.monotonic() + 120
        while any(app.state.server.phase != "ready" for app in apps.values()):
            if any(app.state.server.phase == "failed" for app in apps.values()) or time.monotonic() > deadline:
                raise SystemExit("model did not load")
            await asyncio.sleep(0.05)
        for mode in MODES:  # one unmeasured warm-up cell each
            await measure(clients[mode], max(args.concurrency), 1.0, args.mask)
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    rate = await measure(clients[mode], concurrency, args.seconds, args.mask)
                    results[mode][concurrency].append(rate)
        batches = {mode: _batch_stats(app) for mode, app in apps.items()}
        for client in clients.values():
            await client.aclose()
    return {"results": results, "batches": batches}


def _batch_stats(app: Any) -> dict[str, float]:
    histogram = app.state.server.metrics.batch_size
    samples = {s.name: s.value for metric in histogram.collect() for s in metric.samples}
    count = samples.get("kubediffusion_inference_batch_size_count", 0.0)
    total = samples.get("kubediffusion_inference_batch_size_sum", 0.0)
    return {"batches": count, "mean_batch_size": round(total / count, 2) if count else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (cells alternate order per round)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--mask", action="store_true", help="inpainting (a mask) instead of image-to-image")
    parser.add_argument("--model-dir", type=Path, default=None, help="tiny model dir (default: write one)")
    args = parser.parse_args()
    import torch

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        model_dir = args.model_dir or Path(tmp) / "tiny"
        if args.model_dir is None:
            write_tiny_pipeline(model_dir, "sd")
        outcome = asyncio.run(run(args, model_dir))
    results = outcome["results"]
    task = "inpainting" if args.mask else "image-to-image, strength 0.75"
    print(
        f"edits ({task}) on the tiny SD, CPU ({torch.get_num_threads()} torch threads), {SIZE[0]}x{SIZE[1]}, "
        f"{STEPS} steps, CFG; median of {args.rounds} x {args.seconds:.0f}s per cell"
    )
    print(f"{'concurrency':>11}  {'off img/s':>10}  {'on img/s':>9}  {'on/off':>6}")
    summary: dict[str, Any] = {"bench": "edits", "task": "inpaint" if args.mask else "img2img", "cells": []}
    for concurrency in args.concurrency:
        off = statistics.median(results["off"][concurrency])
        on = statistics.median(results["on"][concurrency])
        ratio = on / off if off else float("nan")
        print(f"{concurrency:>11}  {off:>10.2f}  {on:>9.2f}  {ratio:>6.2f}x")
        summary["cells"].append(
            {"concurrency": concurrency, "off_images_per_s": round(off, 3), "on_images_per_s": round(on, 3)}
            | {"ratio": round(ratio, 3)}
        )
    print(f"batches: {outcome['batches']}")
    summary["batches"] = outcome["batches"]
    summary["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
