"""InferenceSettings: KD_INFERENCE_* environment, CLI flags for every field (pydantic-settings), flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubediffusion.inference import main as inference_main
from kubediffusion.inference.settings import InferenceSettings, settings_from_cli


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


def test_help_lists_every_field_as_a_flag_with_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        inference_main.main(["--help"])
    assert exit_.value.code == 0
    help_ = capsys.readouterr().out
    assert help_.startswith("usage: kubediffusion inference")
    for name in InferenceSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in help_
        assert f"KD_INFERENCE_{name.upper()}" in help_
    assert "--no-warmup" in help_ and "--no-compile" in help_


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--model-dir", "/m"], "model_dir", Path("/m")),
        (["--model-name=n"], "model_name", "n"),
        (["--pipeline", "StableDiffusionXLPipeline"], "pipeline", "StableDiffusionXLPipeline"),
        (["--device", "cpu"], "device", "cpu"),
        (["--host", "0.0.0.0"], "host", "0.0.0.0"),
        (["--max-batch-size", "8"], "max_batch_size", 8),
        (["--max-queue", "3"], "max_queue", 3),
        (["--warmup"], "warmup", True),
        (["--no-warmup"], "warmup", False),
        (["--compile"], "compile", True),
        (["--log-level", "DEBUG"], "log_level", "debug"),
    ],
)
def test_each_flag_sets_its_field(argv: list[str], field: str, value: object) -> None:
    settings = settings_from_cli(argv)
    assert getattr(settings, field) == value
    assert settings.model_fields_set == {field}


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_PORT", "9000")
    monkeypatch.setenv("KD_INFERENCE_COMPILE", "true")
    settings = settings_from_cli(
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
    assert settings_from_cli(["--aliases", '["x", "y"]']).aliases == ["x", "y"]


def test_json_flags_win_key_by_key_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_PRESETS", '{"anime": {"prompt": "{prompt}, anime"}}')
    monkeypatch.setenv("KD_INFERENCE_DEFAULTS", '{"steps": 9, "size": "256x256"}')
    monkeypatch.setenv("KD_INFERENCE_ALIASES", '["env-alias"]')
    settings = settings_from_cli(
        ["--presets", '{"noir": {"prompt": "{prompt}, noir"}}', "--defaults", '{"steps": 3}', "--aliases", "cli"]
    )
    assert set(settings.presets) == {"anime", "noir"}  # objects merge (as pydantic-settings merges sources)
    assert (settings.defaults.steps, settings.defaults.size) == (3, "256x256")
    assert settings.aliases == ["cli"]  # a list is replaced
    assert "defaults" in settings.model_fields_set  # counts as configured: the tiny model's marker is ignored


def test_environment_alone_is_used_when_no_flag_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_INFERENCE_MODEL_NAME", "from-env")
    monkeypatch.setenv("KD_INFERENCE_WARMUP", "false")
    settings = settings_from_cli([])
    assert (settings.served_name, settings.warmup) == ("from-env", False)
    assert "defaults" not in settings.model_fields_set


@pytest.mark.parametrize(
    "argv",
    [
        ["--dtype", "int8"],
        ["--max-batch-size", "0"],
        ["--limits", "{not json"],
        ["--defaults", '{"size": "huge"}'],
        ["--log-level", "loud"],
        ["--presets", "[1]"],
        ["--port", "eighty"],
        ["--no-such-flag", "1"],
    ],
)
def test_bad_settings_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert inference_main.main(argv) == 2
    assert "kubediffusion inference: invalid settings:" in capsys.readouterr().err


def test_bad_environment_exits_2_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KD_INFERENCE_LIMITS", "{not json")
    assert inference_main.main([]) == 2
    err = capsys.readouterr().err
    assert '"limits"' in err and "Expecting property name" in err


def test_missing_model_dir_exits_1_before_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert inference_main.main(["--model-dir", str(tmp_path / "absent")]) == 1
    assert "does not exist" in caplog.text


def test_directory_without_model_index_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert inference_main.main(["--model-dir", str(tmp_path)]) == 1
    assert "model_index.json is missing" in caplog.text
