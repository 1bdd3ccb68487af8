"""The model server's log format and OTLP endpoint: a flag or a KD_INFERENCE_* variable each, and main()
installs the log format before anything is logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubediffusion.api.logformat import JsonFormatter
from kubediffusion.api.tracecontext import otlp_endpoint
from kubediffusion.inference import main as inference_main
from kubediffusion.inference.logs import InferenceLogHandler
from kubediffusion.inference.settings import InferenceSettings, settings_from_cli


def test_log_format_and_otlp_endpoint_come_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (InferenceSettings().log_format, InferenceSettings().otlp_endpoint) == ("text", "")
    monkeypatch.setenv("KD_INFERENCE_LOG_FORMAT", "JSON")
    monkeypatch.setenv("KD_INFERENCE_OTLP_ENDPOINT", "http://collector:4318")
    from_env = settings_from_cli([])
    assert (from_env.log_format, from_env.otlp_endpoint) == ("json", "http://collector:4318")
    flags = settings_from_cli(["--log-format", "text", "--otlp-endpoint", "http://other:4318"])
    assert (flags.log_format, flags.otlp_endpoint) == ("text", "http://other:4318")
    with pytest.raises(ValidationError):
        InferenceSettings(log_format="yaml")  # type: ignore[arg-type]


def test_the_otlp_endpoint_is_the_servers_setting_or_the_standard_variables() -> None:
    assert otlp_endpoint("", {}) is None
    assert otlp_endpoint("http://collector:4318/", {}) == "http://collector:4318/v1/traces"
    assert otlp_endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
    assert otlp_endpoint("", traces) == "http://c:4318/custom"
    assert otlp_endpoint("http://mine:4318", traces) == "http://mine:4318/v1/traces"
    assert otlp_endpoint("http://mine:4318", {"OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_endpoint("http://mine:4318", {"OTEL_TRACES_EXPORTER": "none"}) is None


def test_main_logs_json_lines_through_one_handler_while_it_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs: list[Any] = []
    root = logging.getLogger()
    installed: list[logging.Handler] = []

    class NotServing:
        def __init__(self, config: Any) -> None:
            configs.append(config)

        def run(self) -> None:
            installed.extend(h for h in root.handlers if isinstance(h, InferenceLogHandler))
            logging.getLogger("kubediffusion.inference.test").info("serving")

    level = root.level
    monkeypatch.setattr(inference_main, "check_model_dir", lambda _: None)
    monkeypatch.setattr(inference_main.uvicorn, "Server", NotServing)
    try:
        assert inference_main.main(["--model-dir", str(tmp_path), "--log-format", "json"]) == 0
    finally:
        root.setLevel(level)
    assert len(installed) == 1 and isinstance(installed[0].formatter, JsonFormatter)
    assert not any(isinstance(h, InferenceLogHandler) for h in root.handlers)  # gone once main() returns
    (config,) = configs
    assert config.log_config is None  # uvicorn keeps no handlers of its own: its lines go through ours
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert {"logger": "kubediffusion.inference.test", "message": "serving", "request_id": "-"}.items() <= next(
        line for line in lines if line["logger"] == "kubediffusion.inference.test"
    ).items()
