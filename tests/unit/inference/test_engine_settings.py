"""The engine settings: flags and KD_INFERENCE_ENGINE_* variables, what they require, and the upstream
credential, which is never a flag (a file, or KD_INFERENCE_ENGINE_API_KEY)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kubediffusion.inference import main as inference_main
from kubediffusion.inference.settings import InferenceSettings, engine_api_key, settings_from_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KD_INFERENCE_"):
            monkeypatch.delenv(name)


def test_engine_flags_and_their_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KD_INFERENCE_ENGINE", "comfyui")
    monkeypatch.setenv("KD_INFERENCE_ENGINE_URL", "http://comfy:8188")
    monkeypatch.setenv("KD_INFERENCE_ENGINE_SIZES", '["1024x1024"]')
    workflow = tmp_path / "w.json"
    settings = settings_from_cli(
        ["--engine-model", "sdxl.safetensors", "--engine-timeout-seconds", "60", "--engine-workflow", str(workflow)]
    )
    assert (settings.engine, settings.engine_url, settings.engine_model) == (
        "comfyui",
        "http://comfy:8188",
        "sdxl.safetensors",
    )
    assert (settings.engine_timeout_seconds, settings.engine_workflow, settings.engine_sizes) == (
        60.0,
        workflow,
        ["1024x1024"],
    )
    assert settings.served_name == "sdxl.safetensors"
    assert settings_from_cli(["--engine", "stub"]).served_name == "stub"
    assert settings_from_cli(["--engine", "stub", "--model-name", "smoke"]).served_name == "smoke"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"engine": "invokeai"}, "needs engine_url"),
        ({"engine": "openai", "engine_url": "ftp://x"}, "needs engine_url"),
        ({"engine": "automatic1111", "engine_url": "http://a", "engine_workflow": "w.json"}, "comfyui setting"),
        ({"engine": "stub", "engine_sizes": ["big"]}, "WIDTHxHEIGHT"),
        ({"engine": "teapot"}, "engine"),
    ],
)
def test_engine_settings_that_cannot_work_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InferenceSettings(**values)  # type: ignore[arg-type]


def test_main_exits_2_for_an_adapter_without_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert inference_main.main(["--engine", "invokeai"]) == 2
    assert "needs engine_url" in capsys.readouterr().err


def test_the_credential_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    with_file = InferenceSettings(engine="stub", engine_api_key_file=key_file)
    assert engine_api_key(with_file, {"KD_INFERENCE_ENGINE_API_KEY": "from-env"}) == "from-file"
    without = InferenceSettings(engine="stub")
    assert engine_api_key(without, {"KD_INFERENCE_ENGINE_API_KEY": " from-env "}) == "from-env"
    assert engine_api_key(without, {}) is None
    with pytest.raises(OSError):
        engine_api_key(InferenceSettings(engine="stub", engine_api_key_file=tmp_path / "missing"), {})


def test_the_credential_is_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        inference_main.main(["--help"])
    help_ = capsys.readouterr().out
    assert "--engine-api-key-file" in help_ and "--engine-api-key " not in help_
    assert inference_main.main(["--engine-api-key", "secret"]) == 2
