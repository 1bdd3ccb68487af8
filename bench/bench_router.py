"""Router overhead: requests/s, latency and CPU through the router vs straight to the backend, side by side.

A fake backend (uvicorn on 127.0.0.1, a raw ASGI app) answers every generation with the same canned
~1.5 MB b64_json response, so no GPU work hides the router's cost. Each router runs as its own process
(`kubediffusion router`, static discovery, rate limits off) in front of it: ``fast`` as shipped (uvloop,
httptools), ``plain`` with asyncio's loop and h11 (uvicorn without its optional speedups, what the router
ran on before they became dependencies). Rounds alternate direct / each router so machine noise hits all
alike; everything is bounded in count and time. The CPU seconds of each server process (from
/proc/<pid>/stat) are read around each run: the router's per request is its whole cost, parsing the pod's
JSON and adding ids included.

    python bench/bench_router.py                  # defaults: 3 rounds x 60 latency + 200 throughput requests
    python bench/bench_router.py --rounds 1 --latency-requests 20 --throughput-requests 50 --stacks fast  # quick
    PYTHONPATH=/tmp/old python bench/bench_router.py  # another version's package (git archive) in the same harness
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kubediffusion.local import LOOPBACK, free_port, static_config, stop_process, wait_ready

REQUEST = json.dumps({"prompt": "benchmark", "size": "64x64", "response_format": "b64_json"}).encode()


def canned_body(size: int) -> bytes:
    image = secrets.token_bytes(size * 3 // 4)  # base64 grows 4/3
    return json.dumps(
        {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(image).decode()}], "output_format": "png"}
    ).encode()


def serve_router(stack: str, argv: list[str]) -> int:
    """``kubediffusion router`` as shipped (``fast``), or made to run on asyncio and h11 (``plain``)."""
    import uvicorn

    from kubediffusion.api.headertimeout import http_protocol
    from kubediffusion.router import main as router_main

    run = uvicorn.run

    def run_plain(app: Any, **options: Any) -> None:
        options.update(loop="asyncio", http=http_protocol(options["http"].header_timeout, "h11"))
        run(app, **options)

    if stack == "plain":
        uvicorn.run = run_plain
    return router_main.main(argv)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux's /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


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


@dataclass
class Target:
    """One server to measure: its URL and the process whose CPU seconds count (the router's, or the pod's
    when going direct)."""

    name: str
    url: str
    pid: int
    lat: list[float] = field(default_factory=list)
    tput_lat: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu: float = 0.0
    requests: int = 0

    async def load(self, count: int, concurrency: int, deadline: float) -> tuple[list[float], float]:
        before = cpu_seconds(self.pid)
        latencies, wall, _ = await run_load(self.url, count, concurrency, deadline)
        self.cpu += cpu_seconds(self.pid) - before
        self.requests += len(latencies)
        return latencies, wall

    def summary(self) -> dict[str, Any]:
        return {
            "p50_ms": 1000 * percentile(self.lat, 50),
            "p99_ms": 1000 * percentile(self.lat, 99),
            "rps": statistics.median(self.rps),
            "loaded_p50_ms": 1000 * percentile(self.tput_lat, 50),
            "loaded_p99_ms": 1000 * percentile(self.tput_lat, 99),
            "cpu_ms_per_request": 1000 * self.cpu / max(1, self.requests),
            "samples": len(self.lat),
        }


async def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + args.max_seconds
    for target in targets:  # warm up connections and code paths
        await run_load(target.url, 10, 2, deadline)
    for _ in range(args.rounds):
        for target in targets:
            latencies, _ = await target.load(args.latency_requests, 1, deadline)
            target.lat += latencies
            latencies, wall = await target.load(args.throughput_requests, args.concurrency, deadline)
            target.tput_lat += latencies
            target.rps.append(len(latencies) / wall)
    return {target.name: target.summary() for target in targets}


ROWS = (
    ("p50_ms", "latency p50 (ms)"),
    ("p99_ms", "latency p99 (ms)"),
    ("rps", "requests/s"),
    ("loaded_p50_ms", "loaded p50 (ms)"),
    ("loaded_p99_ms", "loaded p99 (ms)"),
    ("cpu_ms_per_request", "server CPU ms/request"),
)


def report(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    direct = summary["direct"]
    names = list(summary)
    print(
        f"router vs direct, {args.body_bytes / 1e6:.1f} MB b64_json responses, {direct['samples']} sequential + "
        f"concurrency {args.concurrency}, {args.rounds} interleaved rounds"
    )
    print(f"{'':24}" + "".join(f"{name:>14}" for name in names))
    for key, label in ROWS:
        print(f"{label:<24}" + "".join(f"{summary[name][key]:>14.2f}" for name in names))
    for name in names[1:]:
        routed = summary[name]
        print(
            f"{name}: added latency p50 {routed['p50_ms'] - direct['p50_ms']:+.2f} ms, "
            f"p99 {routed['p99_ms'] - direct['p99_ms']:+.2f} ms; throughput {routed['rps'] / direct['rps']:.2f}x "
            f"direct; {routed['cpu_ms_per_request']:.2f} ms of router CPU per request"
        )


def start_stack(stack: str, config: Path, port: int, work: str) -> subprocess.Popen[bytes]:
    """A router of ``stack`` (see :func:`serve_router`) in its own process, as ``start_router`` runs one."""
    env = {
        **os.environ,
        "KD_ROUTER_RATE_LIMIT_RPS": "0",
        "KD_ROUTER_GLOBAL_RATE_LIMIT_RPS": "0",
        "KD_ROUTER_LOG_LEVEL": "warning",
        "KD_ROUTER_STORAGE_DIR": str(Path(work) / "images"),
        "KD_ROUTER_SIGNING_KEY": "b" * 32,
    }
    router_argv = ["--static-config", str(config), "--host", LOOPBACK, "--port", str(port)]
    return subprocess.Popen([sys.executable, __file__, "--serve-router", stack, *router_argv], env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=60, help="per round, one at a time")
    parser.add_argument("--throughput-requests", type=int, default=200, help="per round, concurrently")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--body-bytes", type=int, default=1_500_000, help="size of the canned response")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop measuring after this long")
    parser.add_argument(
        "--stacks", default="fast,plain", help="routers to measure: fast (uvloop, httptools), plain (asyncio, h11)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--serve-fake-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-router", choices=("fast", "plain"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.serve_router:
        return serve_router(args.serve_router, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.serve_fake_backend:
        serve_fake_backend(args.serve_fake_backend, args.body_bytes)
        return 0
    stacks = [stack for stack in args.stacks.split(",") if stack]
    if not stacks or not set(stacks) <= {"fast", "plain"}:
        parser.error("--stacks: a comma-separated list of fast, plain")

    backend_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-router-") as work:
        try:
            backend_argv = ["--serve-fake-backend", str(backend_port), "--body-bytes", str(args.body_bytes)]
            processes.append(subprocess.Popen([sys.executable, __file__, *backend_argv]))
            backend = f"http://{LOOPBACK}:{backend_port}"
            wait_ready(f"{backend}/readyz", timeout=30, process=processes[0])
            targets = [Target("direct", f"{backend}/v1/images/generations", processes[0].pid)]
            config = Path(work) / "models.yaml"
            config.write_text(static_config("bench", [backend]))
            for stack in stacks:
                port = free_port()
                processes.append(start_stack(stack, config, port, work))
                wait_ready(f"http://{LOOPBACK}:{port}/readyz", timeout=60, process=processes[-1])
                targets.append(
                    Target(f"router-{stack}", f"http://{LOOPBACK}:{port}/v1/images/generations", processes[-1].pid)
                )
            summary = asyncio.run(measure(targets, args))
        finally:
            for process in reversed(processes):
                stop_process(process)
    report(summary, args)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
