"""Router overhead: requests/s and latency through the router vs straight to the backend, side by side.

A fake backend (uvicorn on 127.0.0.1, a raw ASGI app) answers every generation with the same canned
~1.5 MB b64_json response, so no GPU work hides the router's cost. The router runs as its own
process (`kubediffusion router`, static discovery, rate limits off) in front of it. Rounds alternate
direct / router so machine noise hits both alike; everything is bounded in count and time.

    python bench/bench_router.py                  # defaults: 3 rounds x 60 latency + 200 throughput requests
    python bench/bench_router.py --rounds 1 --latency-requests 20 --throughput-requests 50   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from kubediffusion.local import LOOPBACK, free_port, start_router, static_config, stop_process, wait_ready

REQUEST = json.dumps({"prompt": "benchmark", "size": "64x64", "response_format": "b64_json"}).encode()


def canned_body(size: int) -> bytes:
    image = secrets.token_bytes(size * 3 // 4)  # base64 grows 4/3
    return json.dumps(
        {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(image).decode()}], "output_format": "png"}
    ).encode()


def serve_fake_backend(port: int, size: int) -> None:
    """A raw ASGI app: the cheapest server uvicorn can run, so the router is the bottleneck."""
    import uvicorn

    body = canned_body(size)
    ok = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] in ("/readyz", "/health"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": ok})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False)


async def run_load(url: str, count: int, concurrency: int, deadline: float) -> tuple[list[float], float, int]:
    """``count`` POSTs with ``concurrency`` workers: (latencies in s, wall seconds, bytes received)."""
    latencies: list[float] = []
    received = 0
    remaining = count
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining, received
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                started = time.perf_counter()
                response = await client.post(url, content=REQUEST, headers={"content-type": "application/json"})
                body = await response.aread()
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {body[:200]!r}")
                received += len(body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, received


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def measure(direct: str, routed: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + args.max_seconds
    results: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "tput_lat": [], "rps": []} for name in ("direct", "router")
    }
    for target in (direct, routed):  # warm up connections and code paths
        await run_load(target, 10, 2, deadline)
    for _ in range(args.rounds):
        for name, target in (("direct", direct), ("router", routed)):
            latencies, _, _ = await run_load(target, args.latency_requests, 1, deadline)
            results[name]["lat"] += latencies
            latencies, wall, _ = await run_load(target, args.throughput_requests, args.concurrency, deadline)
            results[name]["tput_lat"] += latencies
            results[name]["rps"].append(len(latencies) / wall)
    summary: dict[str, dict[str, Any]] = {}
    for name, data in results.items():
        summary[name] = {
            "p50_ms": 1000 * percentile(data["lat"], 50),
            "p99_ms": 1000 * percentile(data["lat"], 99),
            "rps": statistics.median(data["rps"]),
            "loaded_p50_ms": 1000 * percentile(data["tput_lat"], 50),
            "loaded_p99_ms": 1000 * percentile(data["tput_lat"], 99),
            "samples": len(data["lat"]),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=60, help="per round, one at a time")
    parser.add_argument("--throughput-requests", type=int, default=200, help="per round, concurrently")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--body-bytes", type=int, default=1_500_000, help="size of the canned response")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop measuring after this long")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--serve-fake-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake_backend:
        serve_fake_backend(args.serve_fake_backend, args.body_bytes)
        return 0

    backend_port, router_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-router-") as work:
        try:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--serve-fake-backend",
                        str(backend_port),
                        "--body-bytes",
                        str(args.body_bytes),
                    ]
                )
            )
            backend = f"http://{LOOPBACK}:{backend_port}"
            wait_ready(f"{backend}/readyz", timeout=30, process=processes[0])
            config = Path(work) / "models.yaml"
            config.write_text(static_config("bench", [backend]))
            processes.append(
                start_router(
                    config,
                    router_port,
                    env={
                        "KD_ROUTER_RATE_LIMIT_RPS": "0",
                        "KD_ROUTER_GLOBAL_RATE_LIMIT_RPS": "0",
                        "KD_ROUTER_LOG_LEVEL": "warning",
                        "KD_ROUTER_STORAGE_DIR": str(Path(work) / "images"),
                        "KD_ROUTER_SIGNING_KEY": "b" * 32,
                    },
                )
            )
            router = f"http://{LOOPBACK}:{router_port}"
            wait_ready(f"{router}/readyz", timeout=60, process=processes[1])
            summary = asyncio.run(measure(f"{backend}/v1/images/generations", f"{router}/v1/images/generations", args))
        finally:
            for process in reversed(processes):
                stop_process(process)
    d, r = summary["direct"], summary["router"]
    print(
        f"router vs direct, {args.body_bytes / 1e6:.1f} MB b64_json responses, "
        f"{d['samples']} sequential + concurrency {args.concurrency}, {args.rounds} interleaved rounds"
    )
    print(f"{'':24}{'direct':>10}{'router':>10}{'ratio':>8}")
    for key, label in (
        ("p50_ms", "latency p50 (ms)"),
        ("p99_ms", "latency p99 (ms)"),
        ("rps", "requests/s"),
        ("loaded_p50_ms", "loaded p50 (ms)"),
        ("loaded_p99_ms", "loaded p99 (ms)"),
    ):
        print(f"{label:<24}{d[key]:>10.2f}{r[key]:>10.2f}{r[key] / d[key]:>8.2f}")
    print(
        f"added latency: p50 {r['p50_ms'] - d['p50_ms']:+.2f} ms, p99 {r['p99_ms'] - d['p99_ms']:+.2f} ms; "
        f"router throughput = {r['rps'] / d['rps']:.2f}x direct"
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
