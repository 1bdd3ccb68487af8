"""Real processes for router tests: `kubediffusion inference` on the tiny model (CPU) behind
`kubediffusion router` (static discovery), all on free 127.0.0.1 ports."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS
from kubediffusion.local import (
    LOOPBACK,
    free_port,
    start_inference,
    start_router,
    static_config,
    stop_process,
    wait_ready,
)

MODEL = "tiny-sd"
ALIAS = "dall-e-2"
READY_TIMEOUT = 240.0


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    url: str

    def request_count(self) -> float:
        """Sum of kubediffusion_inference_requests_total over all outcomes."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kubediffusion_inference_requests_total")
        )


@dataclass
class Stack:
    pods: list[Pod]
    router: subprocess.Popen[bytes]
    url: str  # the router's base URL


def start_pods(model_dir: Path, count: int) -> list[Pod]:
    pods = []
    for _ in range(count):
        port = free_port()
        pods.append(
            Pod(
                start_inference(
                    model_dir,
                    MODEL,
                    port,
                    defaults=TINY_DEFAULTS,
                    limits=TINY_LIMITS,
                    extra_args=["--aliases", ALIAS, "--max-queue", "64"],
                ),
                f"http://{LOOPBACK}:{port}",
            )
        )
    return pods


def start_stack(model_dir: Path, workdir: Path, pod_count: int = 2) -> Stack:
    pods = start_pods(model_dir, pod_count)
    config = workdir / "models.yaml"
    config.write_text(
        static_config(MODEL, [pod.url for pod in pods], defaults=TINY_DEFAULTS, limits=TINY_LIMITS, aliases=[ALIAS])
    )
    return start_router_for(pods, config, workdir)


def start_router_for(pods: list[Pod], config: Path, workdir: Path) -> Stack:
    """Once ``pods`` are ready, a router with the static ``config`` (naming them); every process is
    stopped when anything fails."""
    router: subprocess.Popen[bytes] | None = None
    try:
        for pod in pods:
            wait_ready(f"{pod.url}/readyz", timeout=READY_TIMEOUT, process=pod.process)
        port = free_port()
        router = start_router(
            config,
            port,
            env={
                "KD_ROUTER_STORAGE_DIR": str(workdir / "images"),
                "KD_ROUTER_SIGNING_KEY": "k" * 32,
                "KD_ROUTER_RATE_LIMIT_RPS": "0",
                "KD_ROUTER_GLOBAL_RATE_LIMIT_RPS": "0",
                "KD_ROUTER_LOG_LEVEL": "warning",
                "KD_ROUTER_EJECT_SECONDS": "30",
            },
        )
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(f"{url}/readyz", timeout=60, process=router)
        return Stack(pods, router, url)
    except BaseException:
        for process in [router, *(pod.process for pod in pods)]:
            if process is not None:
                stop_process(process)
        raise


def stop_stack(stack: Stack) -> None:
    for process in [stack.router, *(pod.process for pod in stack.pods)]:
        stop_process(process)
