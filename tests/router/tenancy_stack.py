"""Real processes for the tenancy tests: `kubediffusion router` (static discovery, a tenants file, JSON logs,
spans to a local OTLP receiver) in front of two `kubediffusion inference` processes serving the tiny
model under two names, and a mock pod in the test process that records what the router sends it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS
from kubediffusion.local import LOOPBACK, free_port, start_inference, stop_process, wait_ready
from tests.unit.router.otlp import Receiver, otlp_receiver
from tests.unit.router.uploads import png

READY_TIMEOUT = 240.0
TINY_MODELS = ("tiny-sd", "tiny-xl")
MOCK_MODEL = "mock-pod"
GONE_MODEL = "mock-gone"  # its one endpoint is a port nobody listens on
COMPUTE_SECONDS = "0.75"  # what the mock pod reports for each request

A_KEY, B_KEY, QUOTA_KEY, LIMITED_KEY, USAGE_KEY, ADMIN_KEY = (
    "sk-a-plain",
    "sk-b-only-its-digest-is-on-disk",
    "sk-quota",
    "sk-limited",
    "sk-usage",
    "sk-ops",
)
B_DIGEST = hashlib.sha256(B_KEY.encode()).hexdigest()


def tenants_yaml(*, a_models: tuple[str, ...] = ("tiny-sd", "mock-*")) -> str:
    tenants = [
        {"name": "team-a", "keys": [A_KEY], "models": list(a_models)},
        {"name": "team-b", "keys": [f"sha256:{B_DIGEST}"], "models": ["tiny-xl"]},
        {"name": "team-quota", "keys": [QUOTA_KEY], "models": ["tiny-*"], "quota": {"imagesPerDay": 2}},
        {"name": "team-limited", "keys": [LIMITED_KEY], "models": ["mock-*"], "rateLimit": {"rps": 0.5, "burst": 2}},
        {"name": "team-usage", "keys": [USAGE_KEY]},
        {"name": "ops", "keys": [ADMIN_KEY], "admin": True},
    ]
    return yaml.safe_dump({"tenants": tenants}, sort_keys=False)


@dataclass
class MockPod:
    """An HTTP server standing in for a model pod: one image per request (500 for the prompt ``fail``),
    ``X-KubeDiffusion-Compute-Seconds`` on each success, and every request's headers recorded."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def mock_pod() -> Iterator[MockPod]:
    pod = MockPod()
    image = base64.b64encode(png(8, 8)).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            pod.headers.append({k.lower(): v for k, v in self.headers.items()})
            if body.get("prompt") == "fail":
                self._answer(500, {"error": {"message": "the mock pod failed", "type": "server_error"}})
                return
            n = int(body.get("n") or 1)
            answer = {"created": 1, "data": [{"b64_json": image} for _ in range(n)]}
            self._answer(200, answer, {"X-KubeDiffusion-Compute-Seconds": COMPUTE_SECONDS})

        def _answer(self, status: int, payload: dict[str, object], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    pod.url = f"http://{LOOPBACK}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pod
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class TenancyStack:
    url: str
    router: subprocess.Popen[bytes]
    log: Path  # the router's output: one JSON object per line
    tenants: Path
    pod: MockPod
    spans: Receiver

    def log_entries(self) -> list[dict[str, object]]:
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries


@contextmanager
def tenancy_stack(model_dir: Path, workdir: Path) -> Iterator[TenancyStack]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with mock_pod() as pod, otlp_receiver() as (otlp_url, receiver):
            endpoints = {}
            for name in TINY_MODELS:
                port = free_port()
                processes.append(start_inference(model_dir, name, port, defaults=TINY_DEFAULTS, limits=TINY_LIMITS))
                endpoints[name] = f"http://{LOOPBACK}:{port}"
            for name, process in zip(TINY_MODELS, processes, strict=True):
                wait_ready(f"{endpoints[name]}/readyz", timeout=READY_TIMEOUT, process=process)
            limits = TINY_LIMITS.model_dump(mode="json", by_alias=True)
            defaults = TINY_DEFAULTS.model_dump(mode="json", by_alias=True)
            models = [
                {"name": name, "endpoints": [endpoints[name]], "defaults": defaults, "limits": limits}
                for name in TINY_MODELS
            ]
            models.append({"name": MOCK_MODEL, "endpoints": [pod.url], "defaults": defaults, "limits": limits})
            gone = f"http://{LOOPBACK}:{free_port()}"
            models.append({"name": GONE_MODEL, "endpoints": [gone], "defaults": defaults, "limits": limits})
            config = workdir / "models.yaml"
            config.write_text(yaml.safe_dump(models, sort_keys=False))
            tenants = workdir / "tenants.yaml"
            tenants.write_text(tenants_yaml())
            log = workdir / "router.log"
            port = free_port()
            with log.open("wb") as out:
                router = subprocess.Popen(
                    start_router_command(config, port),
                    env=router_env(workdir, tenants, otlp_url),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            processes.append(router)
            url = f"http://{LOOPBACK}:{port}"
            wait_ready(f"{url}/readyz", timeout=60, process=router)
            yield TenancyStack(url, router, log, tenants, pod, receiver)
            stop_process(router)  # before the receiver goes: the router exports its last spans on the way out
    finally:
        for process in processes:
            stop_process(process)


def start_router_command(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "kubediffusion.cli", "router", "--static-config", str(config),
            "--host", LOOPBACK, "--port", str(port), "--log-format", "json"]  # fmt: skip


def router_env(workdir: Path, tenants: Path, otlp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_ROUTER_", "OTEL_"))}
    return {
        **env,
        "KD_ROUTER_TENANTS_FILE": str(tenants),
        "KD_ROUTER_STORAGE_DIR": str(workdir / "images"),
        "KD_ROUTER_SIGNING_KEY": "k" * 32,
        "KD_ROUTER_LOG_LEVEL": "info",
        "KD_ROUTER_OTLP_ENDPOINT": otlp_url,
        "KD_ROUTER_MAX_ATTEMPTS": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export spans within a tenth of a second
    }
