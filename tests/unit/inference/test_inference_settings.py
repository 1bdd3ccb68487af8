"""InferenceSettings: KD_INFERENCE_* environment, CLI flags for every field, flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubediffusion.inference import main as inference_main
from kubediffusion.inference.settings import InferenceSettings, build_parser, settings_from_args


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KD_INFERENCE_"):
            monkeypatch.delenv(name)


def test_defaults_are_local_friendly() -> None:
    settings = InferenceSettings()
    assert (settings.host, settings.port, settings.pipeline, settings.device) == ("127.0.0.1", 8000, "auto", "auto")
    assert (settings.max_batch_size, settings.max_queue, settings.warmup, settings.compile) == (4, 16, True, False)


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_MODEL_DIR", "/models/model")
    monkeypatch.setenv("KD_INFERENCE_MODEL_NAME", "sdxl-turbo")
    monkeypatch.setenv("KD_INFERENCE_ALIASES", '["dall-e-2", "fast"]')
    monkeypatch.setenv("KD_INFERENCE_HOST", "0.0.0.0")
    monkeypatch.setenv("KD_INFERENCE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("KD_INFERENCE_WARMUP", "false")
    monkeypatch.setenv("KD_INFERENCE_DEFAULTS", '{"steps": 1, "size": "512x512", "negativePrompt": "x"}')
    monkeypatch.setenv("KD_INFERENCE_LIMITS", '{"maxN": 2}')
    monkeypatch.setenv("KD_INFERENCE_PRESETS", '{"anime": {"prompt": "{prompt}, anime", "negativePrompt": "photo"}}')
    settings = InferenceSettings()
    assert settings.served_name == "sdxl-turbo"
    assert settings.aliases == ["dall-e-2", "fast"]
    assert (settings.host, settings.max_batch_size, settings.warmup) == ("0.0.0.0", 8, False)
    assert (settings.defaults.steps, settings.defaults.negative_prompt, settings.limits.max_n) == (1, "x", 2)
    assert settings.presets["anime"].negative_prompt == "photo"


def test_every_field_is_a_flag() -> None:
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for name in InferenceSettings.model_fields:
        assert "--" + name.replace("_", "-") in flags


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_PORT", "9000")
    monkeypatch.setenv("KD_INFERENCE_COMPILE", "true")
    settings = settings_from_args(
        [
            "--model-dir",
            "/tmp/m",
            "--port",
            "8123",
            "--no-compile",
            "--aliases",
            "a,b",
            "--limits",
            '{"maxSize": 512}',
            "--dtype",
            "bfloat16",
            "--batch-window-ms",
            "5",
        ]
    )
    assert (settings.model_dir, settings.port, settings.compile) == (Path("/tmp/m"), 8123, False)
    assert settings.aliases == ["a", "b"]
    assert (settings.limits.max_size, settings.dtype, settings.batch_window_ms) == (512, "bfloat16", 5.0)
    assert settings.served_name == "m"


def test_aliases_flag_accepts_json() -> None:
    assert settings_from_args(["--aliases", '["x", "y"]']).aliases == ["x", "y"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--dtype", "int8"],
        ["--max-batch-size", "0"],
        ["--limits", "{not json"],
        ["--defaults", '{"size": "huge"}'],
        ["--log-level", "loud"],
    ],
)
def test_bad_settings_exit_2(argv: list[str]) -> None:
    assert inference_main.main(argv) == 2


def test_missing_model_dir_exits_1_before_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert inference_main.main(["--model-dir", str(tmp_path / "absent")]) == 1
    assert "does not exist" in caplog.text


def test_directory_without_model_index_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert inference_main.main(["--model-dir", str(tmp_path)]) == 1
    assert "model_index.json is missing" in caplog.text
