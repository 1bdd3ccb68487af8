"""``bench/gpu.sh --smoke``: the GPU benchmark's whole path (wheel check, one process per variant under a
deadline, JSON per variant, the summary with ratios) on CPU with tiny shapes, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = [pytest.mark.inference, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_run_writes_each_variant_and_the_ratios(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(tmp_path), "--wheels", str(tmp_path / "none")],
        env=env,
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = ["diffusers_fp16", "turbo_ours_bf16_1step", "diffusers_fp16_rerun"]
    assert list(summary["results"]) == names
    for index, name in enumerate(names):
        result = json.loads((tmp_path / f"{index:02d}-{name}.json").read_text())
        assert "error" not in result, result
        (variant,) = result["variants"]
        assert set(variant["batches"]) == {"1", "2"}
    turbo = summary["results"]["turbo_ours_bf16_1step"]
    assert (turbo["size"], turbo["steps"], turbo["guidance"]) == (64, 1, 0.0)
    assert set(summary["ratios_vs_baseline"]["diffusers_fp16_rerun"]) == {"batch_1", "batch_2"}  # the drift
