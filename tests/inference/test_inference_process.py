"""``kubediffusion inference`` as a real process: serves the tiny model, fails fast and clearly on a bad model."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = [pytest.mark.inference, pytest.mark.timeout(120)]


def inference(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubediffusion.cli", "inference", *args]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KD_INFERENCE_")}
    return {**clean, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_nonexistent_model_dir_exits_nonzero_quickly_with_a_clear_message() -> None:
    started = time.monotonic()
    result = subprocess.run(
        inference("--model-dir", "/nonexistent", "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert result.returncode == 1
    assert "model directory /nonexistent does not exist" in result.stderr
    assert time.monotonic() - started < 30


def test_corrupt_model_exits_nonzero_after_starting_with_a_clear_message(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["sd"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    result = subprocess.run(
        inference("--model-dir", str(broken), "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=90,
        env=env(),
    )
    assert result.returncode == 1
    assert "could not load the pipeline" in result.stderr


def wait_ready(base: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not found")


def test_client_that_disconnects_while_queued_is_dropped_by_the_real_server(tiny_models: dict[str, Path]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        inference("--model-dir", str(tiny_models["sd"]), "--port", str(port), "--max-batch-size", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        wait_ready(base, process)
        slow = {"prompt": "slow", "num_inference_steps": 30, "size": "256x256"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(httpx.post, f"{base}/v1/images/generations", json=slow, timeout=120)
            deadline = time.monotonic() + 30
            while httpx.get(f"{base}/info", timeout=5).json()["serving"]["runningImages"] != 1:
                assert time.monotonic() < deadline and not running.done(), "slow request never started"
                time.sleep(0.02)
            body = b'{"prompt": "never generated"}'
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(
                    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                while httpx.get(f"{base}/info", timeout=5).json()["serving"]["queuedImages"] != 1:
                    assert time.monotonic() < deadline, "second request never queued"
                    time.sleep(0.02)
            # the client went away while queued: it leaves the queue before its batch starts
            while httpx.get(f"{base}/info", timeout=5).json()["serving"]["queuedImages"] != 0:
                assert time.monotonic() < deadline, "disconnected request stayed queued"
                time.sleep(0.02)
            assert running.result().status_code == 200
        assert metric(base, 'kubediffusion_inference_requests_total{outcome="disconnected"}') == 1.0
        assert metric(base, "kubediffusion_inference_images_total") == 1.0  # only the slow one was generated
    finally:
        stop(process)


def test_serves_the_tiny_model_until_sigterm(tiny_models: dict[str, Path]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        inference(
            "--model-dir", str(tiny_models["sd"]), "--port", str(port), "--model-name", "tiny", "--aliases", "dall-e-2"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        wait_ready(base, process)
        response = httpx.post(
            f"{base}/v1/images/generations", timeout=60, json={"prompt": "a cat", "model": "dall-e-2", "seed": 1}
        )
        assert response.status_code == 200
        assert response.json()["data"][0]["b64_json"]
        info = httpx.get(f"{base}/info", timeout=5).json()
        assert info["smoke_test"] is True and info["device"] == "cpu"
    finally:
        output = stop(process)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (as Kubernetes expects).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "smoke-test model" in output


def test_the_real_server_guards_its_own_edge(tiny_models: dict[str, Path]) -> None:
    """Body limit, header deadline and a client gone mid-upload, through `main` and uvicorn as deployed."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flags = ["--max-body-bytes", "2048", "--header-read-timeout", "1", "--no-warmup"]
    process = subprocess.Popen(
        inference("--model-dir", str(tiny_models["sd"]), "--port", str(port), *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        wait_ready(base, process)
        too_large = httpx.post(f"{base}/v1/images/generations", json={"prompt": "a", "user": "u" * 4000}, timeout=10)
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")  # and no more
            started = time.monotonic()
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer
            assert slow.recv(65536) == b"" and time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port)) as gone:
            gone.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"prompt": '
            )
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while metric(base, 'kubediffusion_inference_requests_total{outcome="disconnected"}') != 1.0:
            assert time.monotonic() < deadline, "the aborted upload was not counted"
            time.sleep(0.05)
        assert metric(base, 'kubediffusion_inference_requests_total{outcome="error"}') == 0.0
    finally:
        output = stop(process)
    assert output.count("disconnected while sending POST /v1/images/generations") == 1, output
    assert "Traceback" not in output and "unhandled error" not in output and "Exception in ASGI" not in output
