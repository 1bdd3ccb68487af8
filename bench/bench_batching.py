"""Images/s with dynamic batching on vs off, tiny model on CPU, measured side by side in one run.

    python bench/bench_batching.py [--seconds 3] [--rounds 2] [--concurrency 1 4 8] [--model-dir DIR]

Both servers are the real inference app (real pipeline, batcher, encoding) called in-process through
httpx.ASGITransport, so the numbers are about the server, not the network. "off" is max_batch_size=1;
"on" is max_batch_size=8 with a 20 ms window. Cells alternate off/on per concurrency and per round
(this machine is noisy); each cell is a closed loop of `concurrency` clients for `--seconds`. Prints a
table of images/s and on/off ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
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

from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import write_tiny_pipeline

MODES = {"off": {"max_batch_size": 1, "batch_window_ms": 0}, "on": {"max_batch_size": 8, "batch_window_ms": 20}}
REQUEST = {"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 4, "guidance_scale": 5.0}


async def measure(client: httpx.AsyncClient, concurrency: int, seconds: float) -> float:
    """Closed loop: `concurrency` clients, each sending the next request when the last one returns."""
    done = 0
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            response = await client.post("/v1/images/generations", json=REQUEST)
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
            await measure(clients[mode], max(args.concurrency), 1.0)
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    rate = await measure(clients[mode], concurrency, args.seconds)
                    results[mode][concurrency].append(rate)
        batch_metrics = {mode: _batch_stats(app) for mode, app in apps.items()}
        for client in clients.values():
            await client.aclose()
    return {"results": results, "batches": batch_metrics}


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
    print(
        f"tiny SD on CPU ({torch.get_num_threads()} torch threads), {REQUEST['size']}, "
        f"{REQUEST['num_inference_steps']} steps, CFG; median of {args.rounds} x {args.seconds:.0f}s per cell"
    )
    print(f"{'concurrency':>11}  {'off img/s':>10}  {'on img/s':>9}  {'on/off':>6}")
    summary: dict[str, Any] = {"bench": "batching", "cells": []}
    for concurrency in args.concurrency:
        off = statistics.median(results["off"][concurrency])
        on = statistics.median(results["on"][concurrency])
        ratio = on / off if off else float("nan")
        print(f"{concurrency:>11}  {off:>10.2f}  {on:>9.2f}  {ratio:>6.2f}x")
        summary["cells"].append(
            {
                "concurrency": concurrency,
                "off_images_per_s": round(off, 3),
                "on_images_per_s": round(on, 3),
                "ratio": round(ratio, 3),
            }
        )
    print(f"batches: {outcome['batches']}")
    summary["batches"] = outcome["batches"]
    summary["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
