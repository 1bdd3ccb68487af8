"""LoRA adapters: images/s at batch 4 with adapters off vs on, and the cost of switching adapter sets.

    python bench/bench_adapters.py [--batches 40] [--switches 200] [--device cpu|cuda] [--model-dir DIR]

The tiny SD model with two random LoRAs (``kubediffusion tiny-model --lora``), loaded by the server's
own loader, generating through the server's backend (``DiffusersBackend.generate``, one call per batch
of 4 images, 64x64, 4 steps, CFG) so the numbers are the pipeline's. Cells are interleaved batch by
batch (this machine is shared and noisy: a burst of other work hits every cell alike) and each cell's
rate is its median batch time:

* ``plain``: no adapters configured (the baseline, 1.00x);
* ``loaded, base``: both adapters loaded, none active (PEFT's disabled layers on the path);
* ``one adapter``: ``style-a`` at 1.0; ``two adapters``: ``style-a`` 1.0 + ``style-b`` 0.5.

Switch cost: ``AdapterSwitch.activate`` timed alone, cycling through base -> a -> b -> a+b (every call a
real switch: ``set_adapters``/``disable_lora``, no reload); and per batch, batches run in the order
a, a, b, b, ...: the median time of a batch after a different set minus that after the same set.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
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

from kubediffusion.api.pipelines import PipelineChoice
from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.pipeline import DiffusersBackend, load_backend
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import write_tiny_lora, write_tiny_pipeline

BATCH = 4
STEPS = 4
A = (("style-a", 1.0),)
B = (("style-b", 1.0),)
AB = (("style-a", 1.0), ("style-b", 0.5))
CELLS: dict[str, tuple[bool, tuple[tuple[str, float], ...]]] = {
    "plain": (False, ()),
    "loaded, base": (True, ()),
    "one adapter": (True, A),
    "two adapters": (True, AB),
}


def job(adapters: tuple[tuple[str, float], ...]) -> ImageJob:
    params = GenerationParams(
        "a lighthouse at dusk", "", BATCH, 64, 64, STEPS, 5.0, 0, "png", 100, pipeline=PipelineChoice(adapters)
    )
    return ImageJob(params=params, seeds=tuple(range(BATCH)))


def batch_seconds(backend: DiffusersBackend, adapters: tuple[tuple[str, float], ...]) -> float:
    started = time.perf_counter()
    backend.generate([job(adapters)])
    return time.perf_counter() - started


def switch_ms(backend: DiffusersBackend, switches: int) -> float:
    switch = backend.adapters
    assert switch is not None
    cycle = [(), A, B, AB]
    timings = []
    for index in range(switches):
        started = time.perf_counter()
        switch.activate(cycle[index % len(cycle)])
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def settings_for(model_dir: Path, device: str, adapters: bool) -> InferenceSettings:
    configured = [{"name": name, "path": str(model_dir / "adapters" / name)} for name in ("style-a", "style-b")]
    return InferenceSettings(
        model_dir=model_dir,
        model_name="tiny",
        device=device,
        dtype="float32" if device == "cpu" else "float16",
        adapters=configured if adapters else [],
        safety={"checker": "none"},
    )


def run(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    backends = {loaded: load_backend(settings_for(model_dir, args.device, loaded)) for loaded in (False, True)}
    for with_adapters, adapters in CELLS.values():  # unmeasured warm-up of every path
        batch_seconds(backends[with_adapters], adapters)
    times: dict[str, list[float]] = {name: [] for name in CELLS}
    for index in range(args.batches):
        names = list(CELLS)[index % len(CELLS) :] + list(CELLS)[: index % len(CELLS)]
        for name in names:
            with_adapters, adapters = CELLS[name]
            times[name].append(batch_seconds(backends[with_adapters], adapters))
    loaded = backends[True]
    after: dict[str, list[float]] = {"same set": [], "other set": []}
    previous = loaded.adapters.active if loaded.adapters is not None else None
    for index in range(2 * args.batches):
        adapters = A if index % 4 < 2 else B
        after["same set" if adapters == previous else "other set"].append(batch_seconds(loaded, adapters))
        previous = adapters
    return {
        "rates": {name: BATCH / statistics.median(values) for name, values in times.items()},
        "switch_ms": switch_ms(loaded, args.switches),
        "batch_ms": {kind: statistics.median(values) * 1000 for kind, values in after.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="measured batches per cell")
    parser.add_argument("--switches", type=int, default=200, help="timed adapter switches")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model-dir", type=Path, default=None, help="tiny model with adapters/ (default: write one)")
    args = parser.parse_args()
    import torch

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        model_dir = args.model_dir or Path(tmp) / "tiny"
        if args.model_dir is None:
            write_tiny_pipeline(model_dir, "sd")
            for name in ("style-a", "style-b"):
                write_tiny_lora(model_dir, name)
        outcome = run(args, model_dir)
    rates = outcome["rates"]
    threads = f"{torch.get_num_threads()} torch threads" if args.device == "cpu" else "cuda"
    print(f"tiny SD ({threads}), batch {BATCH} of 64x64, {STEPS} steps, CFG; median of {args.batches} batches per cell")
    print(f"{'cell':>14}  {'img/s':>8}  {'vs plain':>8}")
    summary: dict[str, Any] = {"bench": "adapters", "batch": BATCH, "cells": []}
    for name, rate in rates.items():
        ratio = rate / rates["plain"]
        print(f"{name:>14}  {rate:>8.2f}  {ratio:>7.2f}x")
        summary["cells"].append({"cell": name, "images_per_s": round(rate, 3), "ratio": round(ratio, 3)})
    batch_ms = outcome["batch_ms"]
    overhead = batch_ms["other set"] - batch_ms["same set"]
    print(f"switch (set_adapters/disable_lora): {outcome['switch_ms']:.2f} ms median")
    print(
        f"per batch: {batch_ms['same set']:.1f} ms after the same set, {batch_ms['other set']:.1f} ms after "
        f"another ({overhead:+.1f} ms per switch)"
    )
    summary.update(
        switch_ms=round(outcome["switch_ms"], 3),
        batch_ms={kind: round(value, 2) for kind, value in batch_ms.items()},
        switch_overhead_per_batch_ms=round(overhead, 2),
        wall_s=round(time.monotonic() - started, 1),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
