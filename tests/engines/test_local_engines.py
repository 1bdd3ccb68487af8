"""``kubediffusion local --engine NAME --engine-url URL``: any engine tried on one machine, here
AUTOMATIC1111 (a fake, with its --api-auth credential from a file) behind the local router."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from kubediffusion.local import LOOPBACK, free_port, wait_ready
from tests.engines import fake_automatic1111
from tests.engines.upstream import Behaviour, pixel, seed_colour, served

pytestmark = pytest.mark.timeout(120)


def test_local_serves_an_engine_at_a_url(tmp_path: Path) -> None:
    behaviour = Behaviour()
    key_file = tmp_path / "credential"
    key_file.write_text("webui:s3cret")
    with served(fake_automatic1111.app(behaviour, auth=("webui", "s3cret"))) as fake:
        port = free_port()
        command = [sys.executable, "-m", "kubediffusion.cli", "local", "--port", str(port), "--engine", "automatic1111"]
        command += ["--engine-url", fake.url, "--engine-model", "v1-5.safetensors", "--name", "sd15"]
        command += [f"--inference-arg=--engine-api-key-file={key_file}", '--inference-arg=--limits={"minSize": 64}']
        log = (tmp_path / "local.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://{LOOPBACK}:{port}/readyz", timeout=60, process=process)
            client = openai.OpenAI(base_url=f"http://{LOOPBACK}:{port}/v1", api_key="unused", max_retries=0)
            result = client.images.generate(model="sd15", prompt="a barn", size="64x64", n=2, extra_body={"seed": 21})
            assert result.data is not None
            assert [pixel(base64.b64decode(item.b64_json or "")) for item in result.data] == [
                seed_colour(21),
                seed_colour(22),
            ]
            (body,) = behaviour.requests
            assert body["override_settings"] == {"sd_model_checkpoint": "v1-5.safetensors"}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            log.close()
