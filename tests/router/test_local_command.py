"""`kubediffusion local`, the README's main job: serves the tiny model behind the router, and stops
everything it started when it is told to stop."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import psutil
from PIL import Image

from kubediffusion.local import free_port, wait_ready
from tests.support.waiting import wait_for


def test_local_serves_the_tiny_model_and_sigterm_stops_its_children(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "KUBEDIFFUSION_CACHE": str(tiny_model.parent)}  # reuse the session's tiny model
    log = (tmp_path / "local.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "kubediffusion.cli", "local", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=240, process=process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        result = client.images.generate(prompt="a lighthouse", size="64x64", response_format="b64_json")
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
        assert image.size == (64, 64)
        assert "it makes noise, not pictures" in (tmp_path / "local.log").read_text()

        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the model server runs as a child process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        wait_for(
            lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children),
            timeout=20,
            interval=0.2,
            message="the model server stopped with `local`",
        )
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
