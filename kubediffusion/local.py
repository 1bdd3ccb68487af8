"""``kubediffusion local``: the whole serving path on one machine, no cluster.

With no arguments: write the tiny random-weight model once (into ``$KUBEDIFFUSION_CACHE/tiny-sd``,
default ``~/.cache/kubediffusion``), start one inference process on a free 127.0.0.1 port, start the
router (static discovery) on 127.0.0.1:8080, wait until both answer /readyz, print how to call it,
and serve until interrupted; then stop the inference process. ``--model DIR`` serves a real
diffusers model directory instead of the tiny one. ``--engine NAME --engine-url URL`` serves another
engine instead (docs/engines/): an InvokeAI, ComfyUI or AUTOMATIC1111 already running, an
OpenAI-compatible upstream, or ``--engine stub`` (test patterns: no torch, no model, no URL).

The process helpers (``free_port``, ``start_inference``, ``wait_ready``, ``stop_process``) are also
used by the router's process tests and benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
import yaml

from kubediffusion.api.headertimeout import http_protocol
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits
from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS, TINY_NAME

log = logging.getLogger("kubediffusion.local")

LOOPBACK = "127.0.0.1"
ENGINES = ("diffusers", "invokeai", "comfyui", "automatic1111", "openai", "stub")


def cache_dir() -> Path:
    return Path(os.environ.get("KUBEDIFFUSION_CACHE") or Path.home() / ".cache" / "kubediffusion")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def ensure_tiny_model(directory: Path, *, timeout: float = 600.0) -> Path:
    """Write the tiny pipeline into ``directory`` unless it is already there."""
    if (directory / "model_index.json").exists():
        return directory
    log.warning("writing the tiny smoke-test model (random weights) to %s", directory)
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    if directory.exists() and not (directory / "model_index.json").exists():  # left half-written by someone
        shutil.rmtree(directory)
    subprocess.run(
        [sys.executable, "-m", "kubediffusion.cli", "tiny-model", str(partial)],
        check=True,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
    )
    try:
        partial.replace(directory)  # the whole directory at once: nobody ever sees half a model
    except OSError:
        if not (directory / "model_index.json").exists():
            raise
        shutil.rmtree(partial)  # another process finished first; use its copy
    return directory


def start_inference(
    model_dir: Path | None,
    name: str,
    port: int,
    *,
    defaults: GenerationDefaults | None = None,
    limits: GenerationLimits | None = None,
    log_level: str = "warning",
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``kubediffusion inference`` for ``model_dir`` (None: an engine named in ``extra_args``) on
    127.0.0.1:``port`` as a child process."""
    command = [
        sys.executable,
        "-m",
        "kubediffusion.cli",
        "inference",
        *(["--model-dir", str(model_dir)] if model_dir is not None else []),
        "--model-name",
        name,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    if defaults is not None:
        command += ["--defaults", defaults.model_dump_json(by_alias=True)]
    if limits is not None:
        command += ["--limits", limits.model_dump_json(by_alias=True)]
    command += extra_args or []
    return subprocess.Popen(command, env={**os.environ, **(env or {})})


def start_router(static_config: Path, port: int, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``kubediffusion router`` with static discovery on 127.0.0.1:``port`` as a child process;
    ``env`` adds ``KD_ROUTER_*`` settings."""
    command = [
        sys.executable,
        "-m",
        "kubediffusion.cli",
        "router",
        "--static-config",
        str(static_config),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    return subprocess.Popen(command, env={**os.environ, **(env or {})})


def wait_ready(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; RuntimeError when ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with status {process.returncode} before {url} was ready")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} was not ready after {timeout:.0f}s")
            time.sleep(0.25)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 15.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def static_config(
    name: str,
    endpoints: list[str],
    *,
    defaults: GenerationDefaults | None = None,
    limits: GenerationLimits | None = None,
    aliases: list[str] | None = None,
) -> str:
    model: dict[str, Any] = {"name": name, "default": True, "endpoints": endpoints, "aliases": aliases or []}
    if defaults is not None:
        model["defaults"] = defaults.model_dump(mode="json", by_alias=True)
    if limits is not None:
        model["limits"] = limits.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump([model], sort_keys=False)


def banner(base_url: str, name: str, *, tiny: bool, size: str, note: str = "", extensions: bool = True) -> str:
    extra = ', extra_body={"num_inference_steps": 2, "seed": 1}' if extensions else ""
    if tiny:
        note = "the tiny model has random weights: it makes noise, not pictures"
    note = f"\n  ({note})\n" if note else ""
    return f"""
KubeDiffusion is serving '{name}' at {base_url}/v1{note}
Try it:

  curl -s {base_url}/v1/images/generations -H 'Content-Type: application/json' \\
    -d '{{"prompt": "a lighthouse at dawn", "size": "{size}"}}' | head -c 300; echo

  python - <<'PY'
  import base64, openai
  client = openai.OpenAI(base_url="{base_url}/v1", api_key="unused")
  result = client.images.generate(model="{name}", prompt="a lighthouse at dawn", size="{size}",
                                  response_format="b64_json"{extra})
  open("image.png", "wb").write(base64.b64decode(result.data[0].b64_json))
  PY

Models: {base_url}/v1/models   Metrics: {base_url}/metrics   Stop: Ctrl-C
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubediffusion local",
        description="Serve a text-to-image model behind the OpenAI-compatible router on 127.0.0.1 (no cluster): "
        "the tiny random-weight model by default, --model DIR, or --engine NAME [--engine-url URL].",
    )
    parser.add_argument("--model", type=Path, help="a diffusers model directory (default: the tiny model)")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="diffusers",
        help="what makes the images (default diffusers: --model or the tiny model); stub needs nothing, the "
        "others --engine-url",
    )
    parser.add_argument("--engine-url", default="", help="the engine's base URL, e.g. http://127.0.0.1:7860")
    parser.add_argument("--engine-model", default="", help="the engine's model (InvokeAI key, checkpoint, name)")
    parser.add_argument(
        "--name", help="model name clients use (default: tiny-sd, the directory's name, or the engine's)"
    )
    parser.add_argument("--port", type=int, default=8080, help="router port on 127.0.0.1 (default 8080; 0 = any)")
    parser.add_argument("--api-keys-file", type=Path, help="require these API keys (one per line)")
    parser.add_argument(
        "--tenants-file",
        type=Path,
        help="tenants: their keys, allowed models, rate limits and daily image quotas (YAML, docs/tenancy.md)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (default) or one JSON object per line; both carry each request's X-Request-Id",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the model")
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        type=ipaddress.ip_network,
        metavar="CIDR",
        help="a reverse proxy whose X-Forwarded-For names the client (repeatable); default: none, the "
        "connecting address is the client",
    )
    parser.add_argument(
        "--inference-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag for `kubediffusion inference` (repeatable), e.g. --inference-arg=--dtype=float32",
    )
    return parser.parse_args(argv)


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - this command's output is for the person running it


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from kubediffusion.router.logs import configure_logging

    configure_logging("info", args.log_format)  # request ids in the router's lines; httpx's per-poll lines off
    port = args.port or free_port()
    if not port_is_free(port):
        log.error("port %d on %s is taken; choose another with --port", port, LOOPBACK)
        return 1
    from kubediffusion.router.tenants import file_problem

    if args.tenants_file is not None and (problem := file_problem(args.tenants_file)):
        log.error("%s", problem)
        return 1
    engine_args: list[str] = []
    tiny = args.model is None and args.engine == "diffusers"
    model_dir: Path | None
    defaults: GenerationDefaults | None = None
    limits: GenerationLimits | None = None
    if args.engine != "diffusers":
        if args.model is not None:
            log.error("--model is for the diffusers engine; the %s engine takes --engine-url", args.engine)
            return 1
        model_dir, name = None, args.name or args.engine_model or args.engine
        engine_args = ["--engine", args.engine, "--engine-url", args.engine_url, "--engine-model", args.engine_model]
    elif tiny:
        model_dir = ensure_tiny_model(cache_dir() / TINY_NAME)
        name = args.name or TINY_NAME
        defaults, limits = TINY_DEFAULTS, TINY_LIMITS
    else:
        model_dir = args.model.resolve()
        if not (model_dir / "model_index.json").exists():
            log.error("%s is not a diffusers pipeline directory (no model_index.json)", model_dir)
            return 1
        name = args.name or model_dir.name
    inference_port = free_port()
    # SIGTERM stops us like Ctrl-C does, so the model server below is always stopped too (uvicorn
    # re-raises the signal it caught once it has shut down; without this it would kill us outright).
    signal.signal(signal.SIGTERM, _interrupt)
    process = start_inference(
        model_dir, name, inference_port, defaults=defaults, limits=limits, extra_args=engine_args + args.inference_arg
    )
    try:
        _say(f"loading '{name}' from {model_dir or f'the {args.engine} engine {args.engine_url}'.strip()} ...")
        wait_ready(f"http://{LOOPBACK}:{inference_port}/readyz", timeout=args.ready_timeout, process=process)
        with tempfile.TemporaryDirectory(prefix="kubediffusion-local-") as work:
            config = Path(work) / "models.yaml"
            config.write_text(
                static_config(name, [f"http://{LOOPBACK}:{inference_port}"], defaults=defaults, limits=limits)
            )
            base_url = f"http://{LOOPBACK}:{port}"
            server = router_server(
                config,
                Path(work) / "images",
                port,
                api_keys_file=args.api_keys_file,
                tenants_file=args.tenants_file,
                trusted_proxies=args.trusted_proxy,
                log_format=args.log_format,
            )
            note = "the stub engine draws test patterns, not pictures" if args.engine == "stub" else ""
            size = (defaults or GenerationDefaults()).size
            text = banner(base_url, name, tiny=tiny, size=size, note=note, extensions=args.engine != "openai")
            return asyncio.run(_serve_router(server, port, text))
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        stop_process(process)


def router_server(
    config: Path,
    storage: Path,
    port: int,
    *,
    api_keys_file: Path | None = None,
    tenants_file: Path | None = None,
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
    log_format: Literal["text", "json"] = "text",
) -> uvicorn.Server:
    """The router of ``local`` on 127.0.0.1:``port``, static discovery from ``config``, not yet serving.

    It trusts no proxy unless told (``--trusted-proxy``): uvicorn's own proxy headers are off (they would
    believe X-Forwarded-For from 127.0.0.1, that is from every local client), and an explicit empty list
    overrides any KD_ROUTER_TRUSTED_PROXIES in the environment."""
    from kubediffusion.router.app import create_app
    from kubediffusion.router.settings import RouterSettings

    settings = RouterSettings(
        host=LOOPBACK,
        port=port,
        discovery="static",
        static_config=config,
        storage_dir=storage,
        public_base_url=f"http://{LOOPBACK}:{port}",
        api_keys_file=api_keys_file,
        tenants_file=tenants_file,
        log_level="warning",
        log_format=log_format,
        trusted_proxies=trusted_proxies or [],
    )
    return uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=LOOPBACK,
            port=port,
            log_level="warning",
            log_config=None,  # through the root handler (configure_logging): request ids, JSON
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            http=http_protocol(settings.header_read_timeout),
        )
    )


async def _serve_router(server: uvicorn.Server, port: int, text: str) -> int:
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not serving.done():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://{LOOPBACK}:{port}/readyz")).status_code == 200:
                    _say(text)
                    break
            if time.monotonic() > deadline:
                server.should_exit = True
                log.error("the router did not become ready")
                break
            await asyncio.sleep(0.1)
    await serving
    return 0
