"""The whole GPU benchmark in one go (``bench/gpu.sh`` runs this): each variant of
``bench_gpu_sdxl.py`` in its own process under a hard deadline, results written as each finishes.

    python bench/bench_gpu_run.py [--smoke] [--out DIR] [--budget-s 450] [--compile-mode MODE]

Plan (SDXL-shaped random weights, nothing downloaded), in priority order, so a run cut short still has
the ratios that matter most:
  diffusers_fp16            plain diffusers fp16, 1024², CFG, batch 1 and 4 (the baseline)
  ours_bf16                 our eager path (accel.optimize_pipeline), bfloat16
  turbo_*                   SDXL-Turbo-shaped: 512², no CFG, 1 and 4 steps, batch 1 and 4
  ours_bf16_compile_cold    torch.compile (batch 1), empty compile cache (then saved)
  ours_bf16_compile_warm    the same from the saved cache (a restarted pod): compare their process_s
  diffusers_fp16_rerun      the baseline again, last: drift of the machine over the run
Each variant writes ``NN-<name>.json``; after each, ``summary.json`` is rewritten with everything so far
and the ratios (ms/step against the baseline of the same shape; end-to-end ms for Turbo). A variant
that fails or passes its deadline is recorded as such (its process group is killed) and the run goes
on; the baseline re-run always keeps its time. ``--smoke``: tiny shapes on CPU, no compile (the test
suite runs it so this script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANT_SCRIPT = HERE / "bench_gpu_sdxl.py"
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"  # kubediffusion.inference.accel's default
RERUN = "diffusers_fp16_rerun"


@dataclass(frozen=True)
class Variant:
    name: str
    args: tuple[str, ...]
    deadline_s: float
    baseline: str  # the variant its ratios are against


def plan(smoke: bool, compile_mode: str, cache_dir: Path) -> list[Variant]:
    sdxl = ("--size", "1024", "--steps", "10", "--repeats", "1", "--batch", "1", "4")
    sdxl_1 = (*sdxl[:-2], "1")  # compile: batch 1 only (each shape compiles), so cold and warm fit the budget
    turbo = ("--size", "512", "--guidance", "0", "--turbo", "--repeats", "1", "--batch", "1", "4")
    compiled = ("--variant", "compile", "--dtypes", "bfloat16", "--compile-modes", compile_mode)
    variants = [
        Variant("diffusers_fp16", ("--variant", "diffusers", *sdxl), 90, "diffusers_fp16"),
        Variant("ours_bf16", ("--variant", "ours", "--dtypes", "bfloat16", *sdxl), 90, "diffusers_fp16"),
        Variant("turbo_diffusers_fp16_4step", ("--variant", "diffusers", *turbo, "--steps", "4"), 60, ""),
        Variant("turbo_ours_bf16_4step", ("--variant", "ours", "--dtypes", "bfloat16", *turbo, "--steps", "4"), 60, ""),
        Variant("turbo_ours_bf16_1step", ("--variant", "ours", "--dtypes", "bfloat16", *turbo, "--steps", "1"), 60, ""),
        Variant("ours_bf16_compile_cold", (*compiled, *sdxl_1, "--cache-dir", str(cache_dir)), 150, "diffusers_fp16"),
        Variant("ours_bf16_compile_warm", (*compiled, *sdxl_1, "--cache-dir", str(cache_dir)), 90, "diffusers_fp16"),
        Variant(RERUN, ("--variant", "diffusers", *sdxl), 90, "diffusers_fp16"),
    ]
    for index, variant in enumerate(variants):
        if variant.name.startswith("turbo_") and not variant.baseline:
            variants[index] = Variant(variant.name, variant.args, variant.deadline_s, "turbo_diffusers_fp16_4step")
    if smoke:  # tiny shapes on CPU (bench_gpu_sdxl --smoke): the script's plumbing, not its numbers
        keep = ("diffusers_fp16", "turbo_ours_bf16_1step", RERUN)
        variants = [Variant(v.name, (*v.args, "--smoke", "--batch", "1", "2"), 90, v.baseline) for v in variants]
        variants = [v for v in variants if v.name in keep]
    return variants


def run_variant(index: int, variant: Variant, out: Path, deadline_s: float) -> dict[str, Any]:
    target = out / f"{index:02d}-{variant.name}.json"
    command = [sys.executable, str(VARIANT_SCRIPT), *variant.args, "--name", variant.name, "--json-out", str(target)]
    started = time.monotonic()
    log = (out / f"{index:02d}-{variant.name}.log").open("w", encoding="utf-8")
    with log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True) as process:
        try:
            code = process.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the variant and anything it started (compile workers)
            process.wait()
            code = None
    seconds = round(time.monotonic() - started, 1)
    if code == 0 and target.is_file():
        result: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
        result["process_s"] = seconds
        return result
    error = f"passed its {deadline_s:.0f}s deadline" if code is None else f"exited {code} (see {target.stem}.log)"
    result = {"variant": variant.name, "error": error, "process_s": seconds}
    target.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


def cells(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """batch -> timings of the variant's one measured model (empty when it failed)."""
    for variant in result.get("variants", []):
        if "batches" in variant:
            return dict(variant["batches"])
    return {}


def ratios(results: dict[str, dict[str, Any]], variants: list[Variant]) -> dict[str, dict[str, float]]:
    """Per variant and batch: baseline time / its time (above 1 = faster), ms/step, or end to end for Turbo."""
    table: dict[str, dict[str, float]] = {}
    for variant in variants:
        ours, base = cells(results.get(variant.name, {})), cells(results.get(variant.baseline, {}))
        metric = "e2e_ms" if variant.name.startswith("turbo_") else "ms_per_step"
        table[variant.name] = {
            f"batch_{batch}": round(base[batch][metric] / cell[metric], 3)
            for batch, cell in ours.items()
            if batch in base and cell.get(metric)
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, no compile")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/gpu-<time>)")
    parser.add_argument("--budget-s", type=float, default=450, help="the whole run's deadline")
    parser.add_argument("--compile-mode", default=DEFAULT_COMPILE_MODE, help="torch.compile mode of the compiled runs")
    args = parser.parse_args()
    out = args.out or HERE / "results" / time.strftime("gpu-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    variants = plan(args.smoke, args.compile_mode, out / "compile-cache")
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    rerun = next(v for v in variants if v.name == RERUN)
    for index, variant in enumerate(variants):
        left = args.budget_s - (time.monotonic() - started)
        reserve = 0.0 if variant is rerun else rerun.deadline_s
        deadline = min(variant.deadline_s, left - reserve)
        if deadline < 20:
            results[variant.name] = {"variant": variant.name, "error": "skipped: not enough time left in the budget"}
            print(f"{variant.name}: skipped (budget)", flush=True)
            continue
        result = run_variant(index, variant, out, deadline)
        results[variant.name] = result
        timings = cells(result)
        shown = "  ".join(
            f"batch {b}: {c['ms_per_step']:.1f} ms/step, {c['e2e_ms']:.0f} ms e2e" for b, c in timings.items()
        )
        print(f"{variant.name}: {shown or result.get('error')}", flush=True)
        summary = {
            "bench": "gpu",
            "smoke": args.smoke,
            "elapsed_s": round(time.monotonic() - started, 1),
            "ratios_vs_baseline": ratios(results, variants),
            "results": results,
        }
        (out / "summary.part").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (out / "summary.part").replace(out / "summary.json")
    print(json.dumps({"summary": str(out / "summary.json"), "ratios_vs_baseline": ratios(results, variants)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
