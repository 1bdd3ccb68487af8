"""`kubediffusion local`, the README's main job: serves the tiny model behind the router, and stops
everything it started when it is told to stop."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import psutil
import pytest
from PIL import Image

from kubediffusion.local import free_port, stop_process, wait_ready
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


def test_local_serves_tenants_and_logs_json_lines_with_request_ids(tiny_model: Path, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text('tenants:\n  - {name: team-a, keys: ["sk-local-a"], quota: {imagesPerDay: 1}}\n')
    port = free_port()
    env = {**os.environ, "KUBEDIFFUSION_CACHE": str(tiny_model.parent)}
    log_path = tmp_path / "local.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubediffusion.cli", "local", "--port", str(port), "--tenants-file", str(tenants),
             "--log-format", "json"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=240, process=process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local-a", max_retries=0)
        raw = client.images.with_raw_response.generate(
            prompt="a lighthouse", size="64x64", extra_headers={"X-Request-Id": "local-req-1"}
        )
        assert raw.http_response.headers["x-request-id"] == "local-req-1"
        with pytest.raises(openai.RateLimitError) as spent:
            client.images.generate(prompt="a lighthouse", size="64x64")
        assert spent.value.code == "insufficient_quota"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0).models.list()
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        assert any(entry["request_id"] == "local-req-1" and " 200 " in entry["message"] for entry in lines)
    finally:
        stop_process(process)
    assert "sk-local-a" not in log_path.read_text()


def test_local_refuses_a_broken_tenants_file_before_starting_anything(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants: [{name: a, keys: [sk-secret-1], quota: {imagesPerDay: lots}}]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubediffusion.cli",
            "local",
            "--port",
            str(free_port()),
            "--tenants-file",
            str(tenants),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "tenants.0.quota.imagesPerDay" in result.stderr and "sk-secret-1" not in result.stderr
    assert "loading" not in result.stdout  # no model server was started
