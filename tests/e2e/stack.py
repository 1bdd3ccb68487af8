"""The pieces of an end-to-end run: the router process, and helpers that talk to the stack."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from kubernetes import client
from PIL import Image

from kubediffusion.local import free_port
from tests.cluster.operator_fixture import OperatorProcess, create_model, wait_phase
from tests.e2e.podrunner import PodRunner
from tests.e2e.runner_node import PLACEMENT
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 240.0


class RouterProcess:
    """`kubediffusion router` with Kubernetes discovery of one namespace, on a free 127.0.0.1 port."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "router.log"
        self.env = {
            **os.environ,
            "KD_ROUTER_HOST": "127.0.0.1",
            "KD_ROUTER_PORT": str(self.port),
            "KD_ROUTER_DISCOVERY": "kubernetes",
            "KD_ROUTER_KUBECONFIG": str(kubeconfig),
            "KD_ROUTER_NAMESPACE": namespace,
            "KD_ROUTER_STORAGE_DIR": str(workdir / "images"),
            "KD_ROUTER_SIGNING_KEY": "e2e-signing-key-0123456789abcdef",
            "KD_ROUTER_WATCH_TIMEOUT_SECONDS": "10",
            "KD_ROUTER_RATE_LIMIT_RPS": "0",
            "KD_ROUTER_GLOBAL_RATE_LIMIT_RPS": "0",
            **(env or {}),  # a test module's own router settings (its ROUTER_ENV)
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubediffusion.cli", "router"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        wait_for(self._ready, timeout=60, interval=0.3, message=f"router /readyz\n{self.tail()}")
        return self

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"router exited\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class E2EStack:
    api: client.ApiClient
    namespace: str
    operator: OperatorProcess
    router: RouterProcess
    runner: PodRunner
    workdir: Path

    def client(self, **kwargs: Any) -> openai.OpenAI:
        options: dict[str, Any] = {
            "base_url": f"{self.router.url}/v1",
            "api_key": "unused",
            "timeout": 120.0,
            "_strict_response_validation": True,
        }
        options.update(kwargs)
        return openai.OpenAI(**options)

    def apply_model(self, name: str, spec: dict[str, Any]) -> None:
        """Create an ImageModel whose pods land on the pod runner's node."""
        resources = {"gpus": 0, **PLACEMENT, **spec.get("resources", {})}
        create_model(self.api, self.namespace, name, {**spec, "resources": resources})

    def wait_ready(self, name: str, replicas: int = 1) -> dict[str, Any]:
        model = wait_phase(self.api, self.namespace, name, "Ready", timeout=READY_TIMEOUT)
        wait_for(
            lambda: self.routed_endpoints(name) >= replicas,
            timeout=60,
            interval=0.3,
            message=f"router sees {replicas} ready endpoint(s) of {name}\n{self.router.tail()}",
        )
        return model

    def models(self) -> dict[str, dict[str, Any]]:
        answer = httpx.get(f"{self.router.url}/v1/models", timeout=10).json()
        return {entry["id"]: entry for entry in answer["data"]}

    def routed_endpoints(self, name: str) -> int:
        """How many ready pods the router would send this model's requests to."""
        entry = self.models().get(name)
        return int(entry["endpoints"]) if entry is not None else 0

    def pod_ips(self, name: str) -> list[str]:
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector=f"kubediffusion.io/model={name},app.kubernetes.io/component=inference"
        )
        return [p.status.pod_ip for p in pods.items if p.status.pod_ip and p.metadata.deletion_timestamp is None]

    def pod_request_count(self, ip: str) -> float:
        text = httpx.get(f"http://{ip}:8000/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kubediffusion_inference_requests_total")
        )


def decode_image(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image
