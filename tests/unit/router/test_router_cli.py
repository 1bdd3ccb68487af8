"""`kubediffusion router`'s command line: flags and KD_ROUTER_* variables read in one step, a flag winning,
secrets never flags, and bad input a readable exit 2 (never a traceback, never a server started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from kubediffusion.router.main import main
from kubediffusion.router.settings import settings_from_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KD_ROUTER_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--host", "127.0.0.1"], "host", "127.0.0.1"),
        (["--port", "9000"], "port", 9000),
        (["--discovery", "static"], "discovery", "static"),
        (["--static-config", "/etc/models.yaml"], "static_config", Path("/etc/models.yaml")),
        (["--namespace", "models"], "namespace", "models"),
        (["--storage-dir", "/data/images"], "storage_dir", Path("/data/images")),
        (["--log-level", "WARNING"], "log_level", "warning"),
        (["--port=9001"], "port", 9001),
        (["--tenants-file", "/etc/kd/tenants.yaml"], "tenants_file", Path("/etc/kd/tenants.yaml")),
        (["--log-format", "JSON"], "log_format", "json"),
    ],
)
def test_every_flag_sets_its_setting(argv: list[str], field: str, value: object) -> None:
    assert getattr(settings_from_cli(argv), field) == value


def test_a_flag_wins_over_its_variable_and_the_variables_fill_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_ROUTER_PORT", "7000")
    monkeypatch.setenv("KD_ROUTER_HOST", "10.0.0.1")
    monkeypatch.setenv("KD_ROUTER_RATE_LIMIT_RPS", "3.5")
    monkeypatch.setenv("KD_ROUTER_SIGNING_KEY", "k" * 32)
    settings = settings_from_cli(["--port", "9000"])
    assert settings.port == 9000 and settings.host == "10.0.0.1" and settings.rate_limit_rps == 3.5
    assert settings.signing_key is not None and settings.signing_key.get_secret_value() == "k" * 32
    assert settings_from_cli([]).port == 7000


def test_static_config_flag_implies_static_discovery_unless_a_discovery_flag_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings_from_cli(["--static-config", "m.yaml"]).discovery == "static"
    assert settings_from_cli(["--static-config", "m.yaml", "--discovery", "kubernetes"]).discovery == "kubernetes"
    monkeypatch.setenv("KD_ROUTER_DISCOVERY", "kubernetes")
    assert settings_from_cli(["--static-config", "m.yaml"]).discovery == "static"  # the (implied) flag wins
    monkeypatch.delenv("KD_ROUTER_DISCOVERY")
    monkeypatch.setenv("KD_ROUTER_STATIC_CONFIG", "m.yaml")
    assert settings_from_cli([]).discovery == "kubernetes"  # the variable alone implies nothing


@pytest.mark.parametrize(
    "flag", ["--signing-key", "--signing-key-file", "--api-keys-file", "--rate-limit-rps", "--kubeconfig"]
)
def test_secrets_and_the_other_settings_are_not_flags(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError):
        settings_from_cli([flag, "x"])
    assert main([flag, "sk-very-secret"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "--help" in err


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--port", "sk-not-a-port"], {}, "--port / KD_ROUTER_PORT"),
        (["--port", "70000"], {}, "--port / KD_ROUTER_PORT"),
        (["--discovery", "consul"], {}, "--discovery / KD_ROUTER_DISCOVERY"),
        (["--log-level", "loud"], {}, "--log-level / KD_ROUTER_LOG_LEVEL"),
        ([], {"KD_ROUTER_RATE_LIMIT_RPS": "-1"}, "KD_ROUTER_RATE_LIMIT_RPS"),
        ([], {"KD_ROUTER_PORT": "sk-not-a-port"}, "--port / KD_ROUTER_PORT"),
    ],
)
def test_bad_values_exit_2_naming_the_flag_and_variable_without_echoing_them(
    argv: list[str],
    env: dict[str, str],
    names: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kubediffusion router: invalid settings:") and names in err
    assert "sk-not-a-port" not in err and "Traceback" not in err


def test_help_lists_every_flag_with_its_variable_and_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: kubediffusion router")
    for flag in (
        "host",
        "port",
        "discovery",
        "static-config",
        "namespace",
        "storage-dir",
        "log-level",
        "log-format",
        "tenants-file",
    ):
        assert f"--{flag}" in out and f"KD_ROUTER_{flag.upper().replace('-', '_')}" in out
    assert "--signing-key" not in out and "--api-keys-file" not in out
    assert "{kubernetes,static}" in out  # choices are shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--discovery", "static"], "needs --static-config"),
        (["--static-config", "/nonexistent/models.yaml"], "No such file"),
        (["--namespace", "x"], "not found"),  # KD_ROUTER_KUBECONFIG names no file: lightkube's ConfigError
    ],
)
def test_unusable_configuration_exits_2_before_serving(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KD_ROUTER_KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("KD_ROUTER_STORAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("KD_ROUTER_SIGNING_KEY", "k" * 32)
    assert main(argv) == 2
    assert "cannot start the router" in caplog.text and message in caplog.text


def test_a_bad_static_config_file_exits_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("- {name: x, typo: 1}\n")
    assert main(["--static-config", str(config)]) == 2
    assert "static config model #0" in caplog.text


def test_main_serves_with_the_header_deadline_and_without_uvicorns_proxy_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubediffusion.api.headertimeout import HeaderTimeoutMixin
    from kubediffusion.router import main as router_main

    config = tmp_path / "models.yaml"
    config.write_text("- {name: tiny, endpoints: ['http://127.0.0.1:9']}\n")
    monkeypatch.setenv("KD_ROUTER_SIGNING_KEY", "k" * 32)
    monkeypatch.setenv("KD_ROUTER_STORAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("KD_ROUTER_HEADER_READ_TIMEOUT", "7.5")
    served: dict[str, object] = {}
    monkeypatch.setattr(router_main.uvicorn, "run", lambda app, **options: served.update(options))
    assert main(["--static-config", str(config)]) == 0
    protocol = served["http"]
    assert isinstance(protocol, type) and issubclass(protocol, HeaderTimeoutMixin)
    assert protocol.header_timeout == 7.5
    assert served["proxy_headers"] is False  # X-Forwarded-For is believed from KD_ROUTER_TRUSTED_PROXIES only
