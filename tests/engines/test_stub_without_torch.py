"""The stub engine on the base install: a venv with ``pip install -e .`` and no extras (no torch,
diffusers, Pillow or psutil; asserted), running ``kubediffusion inference --engine stub`` and
``kubediffusion local --engine stub``, called from the test venv with the official ``openai`` client in
strict mode: generations (sizes, n, seeds), the stream with partial images, edits and variations,
``url`` answers through the router, and what the stub refuses."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from kubediffusion.local import LOOPBACK, free_port, stop_process, wait_ready
from tests.engines.basevenv import NOT_IN_BASE, BaseVenv
from tests.unit.api.sample_images import mask_png, png

pytestmark = pytest.mark.timeout(900)  # a cold base venv is created by the first test (pip, from its cache)


def base_env() -> dict[str, str]:
    """The environment without anything that would let the base venv see the test venv's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_base_install_has_no_torch_pillow_or_psutil(base_venv: BaseVenv) -> None:
    print(f"base venv {'created' if base_venv.created else 'reused'} in {base_venv.seconds:.1f} s: {base_venv.root}")
    for module in NOT_IN_BASE:
        result = subprocess.run(
            [str(base_venv.python), "-c", f"import {module}"], capture_output=True, text=True, env=base_env()
        )
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    imported = subprocess.run(
        [str(base_venv.python), "-c", "import kubediffusion.cli, kubediffusion.inference.main, kubediffusion.local"],
        capture_output=True,
        text=True,
        env=base_env(),
    )
    assert imported.returncode == 0, imported.stderr


@pytest.fixture(scope="module")
def stub(base_venv: BaseVenv) -> Iterator[str]:
    port = free_port()
    command = [str(base_venv.kubediffusion), "inference", "--engine", "stub", "--port", str(port)]
    command += ["--model-name", "stub", "--aliases", "dall-e-2", "--limits", '{"minSize": 16, "maxSize": 512}']
    process = subprocess.Popen(command, env=base_env())
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(f"{url}/readyz", timeout=60, process=process)
        yield url
    finally:
        stop_process(process)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)


def images(result: Any) -> list[bytes]:
    assert result.data is not None
    return [base64.b64decode(item.b64_json) for item in result.data]


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generations_are_pngs_of_the_requested_size(stub: str) -> None:
    result = client(stub).images.generate(model="dall-e-2", prompt="a lighthouse", size="512x256", n=2)
    assert [(opened(data).format, opened(data).size) for data in images(result)] == [("PNG", (512, 256))] * 2
    assert result.output_format == "png"
    default = client(stub).images.generate(prompt="a lighthouse")  # the default size, 1024x1024
    assert [opened(data).size for data in images(default)] == [(1024, 1024)]


def test_seeds_are_honoured_image_by_image(stub: str) -> None:
    three = images(client(stub).images.generate(prompt="seeded", n=3, size="64x64", extra_body={"seed": 11}))
    again = images(client(stub).images.generate(prompt="seeded", n=3, size="64x64", extra_body={"seed": 11}))
    third = images(client(stub).images.generate(prompt="seeded", size="64x64", extra_body={"seed": 13}))
    other = images(client(stub).images.generate(prompt="another prompt", size="64x64", extra_body={"seed": 11}))
    assert three == again and three[2] == third[0]
    assert len(set(three)) == 3 and other[0] != three[0]


def test_the_stream_sends_partial_images_then_the_image(stub: str) -> None:
    events = list(client(stub).images.generate(prompt="streamed", size="64x64", stream=True, partial_images=2))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert all(opened(base64.b64decode(event.b64_json)).size == (64, 64) for event in events)
    assert len({event.b64_json for event in events}) == 3


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks variations (dall-e-2) so
def test_edits_and_variations(stub: str) -> None:
    edit = client(stub).images.edit(
        image=("in.png", png((96, 64))), mask=("mask.png", mask_png((96, 64))), prompt="a window", n=2
    )
    assert [opened(data).size for data in images(edit)] == [(96, 64)] * 2
    variation = client(stub).images.create_variation(image=("in.png", png((64, 64))), response_format="b64_json")
    assert [opened(data).size for data in images(variation)] == [(64, 64)]


def test_what_the_stub_cannot_do_is_a_400_naming_the_field(stub: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(stub).images.generate(prompt="x", size="64x64", output_format="jpeg")
    assert (caught.value.param, caught.value.code) == ("output_format", "unsupported_parameter")


def test_models_and_info_say_stub_and_degrade_without_psutil(stub: str) -> None:
    (card,) = httpx.get(f"{stub}/v1/models", timeout=5).json()["data"]
    assert (card["id"], card["engine"], card["smoke_test"], card["supports"]["partial_images"]) == (
        "stub",
        "stub",
        True,
        True,
    )
    info = httpx.get(f"{stub}/info", timeout=5).json()
    assert info["system"]["cpuPercent"] is None and info["system"]["ramTotalBytes"] is None
    assert info["model_dir"] is None and info["engine"]["healthy"] is True


def test_local_with_the_stub_serves_through_the_router(base_venv: BaseVenv, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "local.log").open("wb")
    command = [str(base_venv.kubediffusion), "local", "--engine", "stub", "--port", str(port)]
    process = subprocess.Popen(command, env=base_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(f"{url}/readyz", timeout=120, process=process)
        linked = client(url).images.generate(model="stub", prompt="a lighthouse", size="256x256", response_format="url")
        assert linked.data is not None and linked.data[0].url is not None
        fetched = httpx.get(linked.data[0].url, timeout=10)
        assert fetched.status_code == 200 and opened(fetched.content).size == (256, 256)
        inline = client(url).images.generate(prompt="a lighthouse", size="128x128", n=2, response_format="b64_json")
        assert [opened(data).size for data in images(inline)] == [(128, 128)] * 2
        assert "the stub engine draws test patterns" in (tmp_path / "local.log").read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
