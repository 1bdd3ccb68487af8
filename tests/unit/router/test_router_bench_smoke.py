"""The router benchmark still runs (tiny counts): its table, with the router's CPU per request, comes out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "bench_router.py"


@pytest.mark.timeout(120)
def test_the_router_benchmark_reports_latency_throughput_and_router_cpu() -> None:
    argv = ["--rounds", "1", "--latency-requests", "3", "--throughput-requests", "8", "--concurrency", "2"]
    argv += ["--stacks", "fast", "--max-seconds", "60", "--json"]
    result = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ms of router CPU per request" in result.stdout
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(summary) == {"direct", "router-fast"}
    router = summary["router-fast"]
    assert router["samples"] == 3 and router["rps"] > 0
    assert router["cpu_ms_per_request"] > 0  # read from /proc: the router process did the work
