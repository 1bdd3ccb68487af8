"""An engine behind the real serving path: a fake engine (a thread of the test), ``kubediffusion
inference --engine NAME`` in front of it and ``kubediffusion router`` in front of that (processes), all on
127.0.0.1, as ``kubediffusion local --engine`` and a model pod with a sidecar run them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tests.engines import fake_automatic1111, fake_comfyui, fake_invokeai, fake_openai
from tests.engines.upstream import Behaviour, FakeServer

ADAPTERS = ("invokeai", "comfyui", "automatic1111", "openai")
TIMEOUT_S = 2.0  # engine_timeout_seconds of these stacks: a hang is a 504 after it
OPENAI_KEY = "upstream-key"
A1111_AUTH = ("webui", "s3cret")


@dataclass
class EngineStack:
    engine: str
    behaviour: Behaviour
    fake: FakeServer
    inference: subprocess.Popen[bytes]
    pod: str  # the inference server's base URL
    router: subprocess.Popen[bytes]
    url: str  # the router's base URL


def fake_app(engine: str, behaviour: Behaviour) -> Any:
    makers: dict[str, Callable[[], Any]] = {
        "invokeai": lambda: fake_invokeai.app(behaviour),
        "comfyui": lambda: fake_comfyui.app(behaviour),
        "automatic1111": lambda: fake_automatic1111.app(behaviour, auth=A1111_AUTH),
        "openai": lambda: fake_openai.app(behaviour, key=OPENAI_KEY, max_n=2),
    }
    return makers[engine]()


def engine_flags(engine: str, fake_url: str, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The inference flags (and environment) for ``engine`` in front of the fake at ``fake_url``."""
    url = f"{fake_url}/v1" if engine == "openai" else fake_url  # an OpenAI base URL has the /v1
    flags = ["--engine", engine, "--engine-url", url, "--engine-timeout-seconds", str(TIMEOUT_S)]
    flags += ["--engine-poll-interval-seconds", "0.02", "--engine-ready-timeout-seconds", "1", "--max-queue", "64"]
    env: dict[str, str] = {}
    if engine == "invokeai":
        flags += ["--engine-model", fake_invokeai.MODEL_KEY]
    elif engine == "comfyui":
        flags += ["--engine-model", fake_comfyui.CHECKPOINTS[0]]
    elif engine == "automatic1111":
        key_file = workdir / "a1111-credential"
        key_file.write_text(":".join(A1111_AUTH) + "\n")
        flags += ["--engine-model", "fake.safetensors", "--engine-api-key-file", str(key_file)]
    else:
        flags += [
            "--engine-model",
            "fake-image-1",
            "--engine-max-n",
            "2",
            "--engine-sizes",
            json.dumps(["64x64", "128x64"]),
        ]
        env["KD_INFERENCE_ENGINE_API_KEY"] = OPENAI_KEY
    return flags, env


def start_engine_stack(engine: str, workdir: Path) -> EngineStack:
    behaviour = Behaviour()
    fake = FakeServer(fake_app(engine, behaviour))
    fake.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        flags, env = engine_flags(engine, fake.url, workdir)
        port = free_port()
        inference = start_inference(
            None, "engine-model", port, defaults=TINY_DEFAULTS, limits=TINY_LIMITS, extra_args=flags, env=env
        )
        processes.append(inference)
        pod = f"http://{LOOPBACK}:{port}"
        wait_ready(f"{pod}/readyz", timeout=60, process=inference)
        config = workdir / "models.yaml"
        config.write_text(static_config("engine-model", [pod], defaults=TINY_DEFAULTS, limits=TINY_LIMITS))
        router_port = free_port()
        router = start_router(
            config,
            router_port,
            env={
                "KD_ROUTER_STORAGE_DIR": str(workdir / "images"),
                "KD_ROUTER_SIGNING_KEY": "k" * 32,
                "KD_ROUTER_RATE_LIMIT_RPS": "0",
                "KD_ROUTER_GLOBAL_RATE_LIMIT_RPS": "0",
                "KD_ROUTER_LOG_LEVEL": "warning",
            },
        )
        processes.append(router)
        url = f"http://{LOOPBACK}:{router_port}"
        wait_ready(f"{url}/readyz", timeout=60, process=router)
        return EngineStack(engine, behaviour, fake, inference, pod, router, url)
    except BaseException:
        for process in processes:
            stop_process(process)
        fake.stop()
        raise


def stop_engine_stack(stack: EngineStack) -> None:
    stop_process(stack.router)
    stop_process(stack.inference)
    stack.fake.stop()
