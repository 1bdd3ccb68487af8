"""Streaming overhead: time to the first partial image, and a streamed request's total time vs the same
request unstreamed, tiny model on CPU, measured side by side in one run.

    python bench/bench_streaming.py [--reps 16] [--size 256x256] [--steps 8] [--partial-images 3] [--model-dir DIR]

Real servers (uvicorn on loopback ports, in this process, so that events arrive as they are sent)
answer, in alternating order per repetition, the same generation (same seed) three ways: unstreamed;
streamed with ``partial_images`` 0 (the completed event only); streamed with N partial images (one
server, no batch window). Then a batch of 4 concurrent requests, all unstreamed vs one of them
streamed with N partial images: the cost previews add to a batch others share (a second server, 50 ms
window, so the 4 always form one batch). Medians; ratios are streamed / unstreamed. Also prints the
seconds the pipeline thread itself spent making previews (the step callback's share). Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvicorn

from kubediffusion.api.events import SSEDecoder
from kubediffusion.inference.app import create_app
from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.tinymodel import write_tiny_pipeline

GENERATE = "/v1/images/generations"


async def unstreamed(client: httpx.AsyncClient, request: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = await client.post(GENERATE, json=request)
    response.raise_for_status()
    return time.perf_counter() - started


async def streamed(client: httpx.AsyncClient, request: dict[str, Any], partials: int) -> tuple[float | None, float]:
    """(seconds to the first partial image or None, seconds to the completed event)."""
    started = time.perf_counter()
    first: float | None = None
    decoder = SSEDecoder()
    async with client.stream("POST", GENERATE, json={**request, "stream": True, "partial_images": partials}) as r:
        r.raise_for_status()
        async for chunk in r.aiter_raw():
            for event in decoder.feed(chunk):
                if event.event and event.event.endswith("partial_image") and first is None:
                    first = time.perf_counter() - started
                if event.event and event.event.endswith("completed"):
                    return first, time.perf_counter() - started
    raise RuntimeError("the stream ended without a completed event")


async def batch(client: httpx.AsyncClient, request: dict[str, Any], partials: int | None) -> float:
    """Wall time of 4 concurrent requests (one batch); one of them streamed when ``partials`` is set."""
    started = time.perf_counter()
    plain = [unstreamed(client, {**request, "seed": request["seed"] + i}) for i in range(1, 4)]
    first = unstreamed(client, request) if partials is None else streamed(client, request, partials)
    await asyncio.gather(first, *plain)
    return time.perf_counter() - started


async def run(args: argparse.Namespace, single: tuple[str, Any], batched: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        k: [] for k in ("plain", "stream0", "streamN", "first_partial", "batch_plain", "batch_streamed", "preview_s")
    }
    request = {"prompt": "a lighthouse at dusk", "size": args.size, "num_inference_steps": args.steps}
    async with (
        httpx.AsyncClient(base_url=single[0], timeout=300) as client,
        httpx.AsyncClient(base_url=batched, timeout=300) as batch_client,
    ):
        await unstreamed(client, {**request, "seed": 0})  # warm-up
        await streamed(client, {**request, "seed": 0}, args.partial_images)
        await batch(batch_client, {**request, "seed": 0}, None)
        for rep in range(args.reps):
            one = {**request, "seed": 100 * rep}
            cells = ["plain", "stream0", "streamN"]
            for cell in cells if rep % 2 == 0 else reversed(cells):
                if cell == "plain":
                    samples["plain"].append(await unstreamed(client, one))
                elif cell == "stream0":
                    samples["stream0"].append((await streamed(client, one, 0))[1])
                else:
                    first, total = await streamed(client, one, args.partial_images)
                    samples["streamN"].append(total)
                    samples["first_partial"].append(first if first is not None else float("nan"))
                    samples["preview_s"].append(single[1].state.server.backend.last_preview_seconds)
            for cell in ("batch_plain", "batch_streamed") if rep % 2 == 0 else ("batch_streamed", "batch_plain"):
                partials = None if cell == "batch_plain" else args.partial_images
                samples[cell].append(await batch(batch_client, one, partials))
    return samples


@contextlib.contextmanager
def serving(settings: InferenceSettings) -> Any:
    app = create_app(settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline or app.state.server.phase == "failed":
            raise SystemExit("model did not load")
        time.sleep(0.1)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=16, help="repetitions of each cell (order alternates)")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--partial-images", type=int, default=3, choices=range(4))
    parser.add_argument("--model-dir", type=Path, default=None, help="tiny model dir (default: write one)")
    args = parser.parse_args()
    import torch

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        model_dir = args.model_dir or Path(tmp) / "tiny"
        if args.model_dir is None:
            write_tiny_pipeline(model_dir, "sd")
        common: dict[str, Any] = {
            "model_dir": model_dir,
            "model_name": "tiny",
            "device": "cpu",
            "dtype": "float32",
            "max_batch_size": 4,
            "defaults": {"size": "64x64", "steps": 4, "guidance": 5.0},
            "limits": {"minSize": 64, "maxSize": 1024, "maxSteps": 100},
        }
        with (
            serving(InferenceSettings(**common, batch_window_ms=0)) as single,
            serving(InferenceSettings(**common, batch_window_ms=50)) as (batched, _),
        ):
            samples = asyncio.run(run(args, single, batched))
    median = {key: statistics.median(values) for key, values in samples.items()}
    n = args.partial_images
    print(
        f"tiny SD on CPU ({torch.get_num_threads()} torch threads), {args.size}, {args.steps} steps, CFG, "
        f"partial_images={n}; medians of {args.reps}"
    )
    rows = [  # label, measured, the unstreamed one it compares with
        ("unstreamed, total", "plain", "plain"),
        ("streamed, 0 partials, total", "stream0", "plain"),
        (f"streamed, {n} partials, total", "streamN", "plain"),
        (f"streamed, {n} partials, first partial", "first_partial", "plain"),
        ("batch of 4, unstreamed", "batch_plain", "batch_plain"),
        (f"batch of 4, one streamed ({n} partials)", "batch_streamed", "batch_plain"),
    ]
    print(f"{'':<42}  {'seconds':>8}  {'ratio':>6}")
    for label, key, baseline in rows:
        print(f"{label:<42}  {median[key]:>8.3f}  {median[key] / median[baseline]:>6.3f}")
    preview = median["preview_s"]
    print(f"previews in the pipeline thread: {preview * 1000:.1f} ms per request ({n} partial images)")
    summary = {"bench": "streaming", "partial_images": n, "size": args.size, "steps": args.steps}
    summary |= {key: round(value, 4) for key, value in median.items()}
    summary |= {
        "stream0_over_plain": round(median["stream0"] / median["plain"], 3),
        "streamN_over_plain": round(median["streamN"] / median["plain"], 3),
        "first_partial_over_plain": round(median["first_partial"] / median["plain"], 3),
        "batch_streamed_over_plain": round(median["batch_streamed"] / median["batch_plain"], 3),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
