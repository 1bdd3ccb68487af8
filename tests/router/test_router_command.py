"""`kubediffusion router` as a process: flags over KD_ROUTER_* variables, and readable exits for bad input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kubediffusion.local import LOOPBACK, free_port, static_config, stop_process, wait_ready

COMMAND = [sys.executable, "-m", "kubediffusion.cli", "router"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KD_ROUTER_")}
    return {**env, **extra}


def test_flags_win_over_variables_in_a_running_router(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(static_config("tiny-sd", ["http://127.0.0.1:9"]))
    port, env_port = free_port(), free_port()
    env = clean_env(
        KD_ROUTER_PORT=str(env_port),
        KD_ROUTER_DISCOVERY="kubernetes",  # --static-config implies static, over this
        KD_ROUTER_KUBECONFIG=str(tmp_path / "no-kubeconfig"),  # would fail if kubernetes discovery were used
        KD_ROUTER_STORAGE_DIR=str(tmp_path / "images"),
        KD_ROUTER_SIGNING_KEY="k" * 32,
        KD_ROUTER_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [*COMMAND, "--static-config", str(config), "--host", LOOPBACK, "--port", str(port)], env=env
    )
    try:
        wait_ready(f"http://{LOOPBACK}:{port}/readyz", timeout=60, process=process)
        models = httpx.get(f"http://{LOOPBACK}:{port}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["tiny-sd"]
    finally:
        stop_process(process)


def test_bad_flags_and_values_exit_2_with_one_readable_message(tmp_path: Path) -> None:
    env = clean_env(KD_ROUTER_SIGNING_KEY="k" * 32, KD_ROUTER_STORAGE_DIR=str(tmp_path))
    for argv, says in [
        (["--port", "eighty"], "--port / KD_ROUTER_PORT"),
        (["--signing-key", "sk-secret"], "unrecognized arguments"),
        (["--static-config", str(tmp_path / "missing.yaml")], "cannot start the router"),
    ]:
        result = subprocess.run([*COMMAND, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (argv, result.stderr)
        assert says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_help_names_every_flag(tmp_path: Path) -> None:
    result = subprocess.run([*COMMAND, "--help"], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--discovery", "--static-config", "--namespace", "--storage-dir", "--log-level"):
        assert flag in result.stdout


def test_a_running_router_cuts_slow_headers_and_logs_an_aborted_upload_once(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(static_config("tiny-sd", ["http://127.0.0.1:9"]))
    port = free_port()
    env = clean_env(
        KD_ROUTER_STORAGE_DIR=str(tmp_path / "images"),
        KD_ROUTER_SIGNING_KEY="k" * 32,
        KD_ROUTER_HEADER_READ_TIMEOUT="1",
    )
    process = subprocess.Popen(
        [*COMMAND, "--static-config", str(config), "--host", LOOPBACK, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(f"http://{LOOPBACK}:{port}/readyz", timeout=60, process=process)
        with socket.create_connection((LOOPBACK, port), timeout=10) as slow:
            slow.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")  # and no more
            started = time.monotonic()
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer
            assert slow.recv(65536) == b"" and time.monotonic() - started < 5
        with socket.create_connection((LOOPBACK, port)) as gone:
            gone.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"prompt": '
            )
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while 'code="499"' not in httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=5).text:
            assert time.monotonic() < deadline, "the aborted upload was not counted"
            time.sleep(0.05)
    finally:
        stop_process(process)
        output = process.stdout.read() if process.stdout else ""
    assert output.count("disconnected while sending POST /v1/images/generations") == 1, output
    assert "Traceback" not in output and "unhandled error" not in output and "Exception in ASGI" not in output
