"""`kubediffusion operator` flags and KD_OPERATOR_* variables, parsed in one step by pydantic-settings."""

from __future__ import annotations

import json

import pytest
from pydantic_settings import CliApp

from kubediffusion.operator.main import main
from kubediffusion.operator.policy import DownloadPolicy
from kubediffusion.operator.settings import OperatorSettings

ENV = {
    "KD_OPERATOR_NAMESPACE": "a, b",
    "KD_OPERATOR_INFERENCE_IMAGE": "registry.example/inference:2",
    "KD_OPERATOR_PROFILES": json.dumps({"nvidia-l4": {"gpus": 1, "nodeSelector": {"gpu": "l4"}}}),
    "KD_OPERATOR_RESYNC_SECONDS": "30",
    "KD_OPERATOR_POLL_SECONDS": "2",
    "KD_OPERATOR_HEALTH_PORT": "8081",
    "KD_OPERATOR_DOWNLOAD_ALLOW_HTTP": "true",
    "KD_OPERATOR_DOWNLOAD_ALLOWED_NETWORKS": "10.20.0.0/16, 127.0.0.1",
    "KD_OPERATOR_DOWNLOAD_ALLOWED_HOSTS": "Models.example,*.cdn.example",
    "KD_OPERATOR_ALLOWED_IMAGES": '["ghcr.io/acme/", "registry.example"]',
}


def parse(argv: list[str]) -> OperatorSettings:
    return CliApp.run(OperatorSettings, cli_args=argv)


def test_every_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    settings = parse([])
    assert settings.namespaces == ["a", "b"]
    assert settings.inference_image == "registry.example/inference:2"
    assert settings.profiles["nvidia-l4"].node_selector == {"gpu": "l4"}
    assert (settings.resync_seconds, settings.poll_seconds, settings.health_port) == (30, 2, 8081)
    assert not settings.verbose
    # Lists are comma-separated (or JSON); networks are canonical CIDRs, as fetch-model and NetworkPolicies read them.
    assert settings.download == DownloadPolicy(
        allow_http=True,
        allowed_networks=("10.20.0.0/16", "127.0.0.1/32"),
        allowed_hosts=("models.example", "*.cdn.example"),
    )
    assert settings.allowed_images == ["ghcr.io/acme/", "registry.example"]


def test_a_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    settings = parse(["--namespace", "team", "--health-port", "0", "--verbose"])
    assert settings.namespaces == ["team"] and settings.health_port == 0 and settings.verbose
    assert settings.poll_seconds == 2, "what no flag sets still comes from the environment"
    assert parse(["--namespace", ""]).namespaces == [], "empty = every namespace"


def test_download_policy_and_allowed_images_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    settings = parse(
        [
            "--download-allow-http",
            "--download-allowed-networks", "192.168.1.7/24",
            "--download-allowed-networks", "fd00::/8",
            "--download-allowed-hosts", "a.example,b.example",
            "--allowed-images", "ghcr.io/acme/",
        ]
    )  # fmt: skip
    assert settings.download.fetch_flags() == [
        "--allow-http", "--allow-network", "192.168.1.0/24", "--allow-network", "fd00::/8",
        "--allow-host", "a.example", "--allow-host", "b.example",
    ]  # fmt: skip
    assert settings.allowed_images == ["ghcr.io/acme/"]
    monkeypatch.setenv("KD_OPERATOR_DOWNLOAD_ALLOW_HTTP", "true")
    assert not parse(["--no-download-allow-http"]).download.allow_http, "a flag wins over the environment"


def test_defaults_without_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    settings = parse([])
    assert settings.namespaces == [] and settings.health_port == 8080 and settings.resync_seconds == 60
    assert settings.download == DownloadPolicy() and settings.download.fetch_flags() == [], "https only, no internals"
    assert settings.allowed_images == [], "any image unless an allow-list is set"


def test_help_lists_the_flags_and_says_where_else_settings_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: kubediffusion operator")
    for flag in ("--namespace", "--health-port", "--verbose", "--inference-image", "--poll-seconds",
                 "--download-allow-http", "--download-allowed-networks", "--download-allowed-hosts",
                 "--allowed-images"):  # fmt: skip
        assert flag in out
    assert "KD_OPERATOR_" in out and "comma-separated namespaces" in out


def test_bad_settings_exit_2_with_the_field_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--health-port", "99999"]) == 2
    assert "health_port" in capsys.readouterr().err
    monkeypatch.setenv("KD_OPERATOR_PROFILES", "{not json")
    assert main([]) == 2
    assert "profiles" in capsys.readouterr().err
    monkeypatch.delenv("KD_OPERATOR_PROFILES")
    assert main(["--download-allowed-networks", "10.0.0.0/33"]) == 2
    assert "download_allowed_networks" in capsys.readouterr().err
    assert main(["--allowed-images", "https://ghcr.io/acme"]) == 2
    assert "allowed_images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--no-such-flag"])
    assert exit_.value.code == 2


def test_autoscaler_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    defaults = parse([])
    assert (defaults.autoscale_interval_seconds, defaults.autoscale_window_seconds) == (5, 30)
    assert (defaults.metrics_timeout_seconds, defaults.metrics_concurrency) == (2, 16)
    assert defaults.router_labels == {}, "no routers: demand from the model pods alone"
    monkeypatch.setenv(
        "KD_OPERATOR_ROUTER_SELECTOR", "app.kubernetes.io/component=router, app.kubernetes.io/instance=kd"
    )
    monkeypatch.setenv("KD_OPERATOR_ROUTER_NAMESPACE", "kd-system")
    monkeypatch.setenv("KD_OPERATOR_AUTOSCALE_INTERVAL_SECONDS", "1")
    settings = parse(["--autoscale-window-seconds", "10", "--metrics-concurrency", "4"])
    assert settings.router_labels == {"app.kubernetes.io/component": "router", "app.kubernetes.io/instance": "kd"}
    assert settings.router_namespace == "kd-system" and settings.autoscale_interval_seconds == 1
    assert (settings.autoscale_window_seconds, settings.metrics_concurrency) == (10, 4)
    assert parse(["--autoscale-interval-seconds", "0"]).autoscale_interval_seconds == 0, "0 turns it off"


@pytest.mark.parametrize("selector", ["app!=router", "app", "app==router,x", "=router"])
def test_a_router_selector_takes_equality_terms_only(selector: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--router-selector", selector]) == 2
    assert "router_selector" in capsys.readouterr().err


def test_every_setting_is_in_the_contracts_doc() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "contracts.md").read_text()
    for name in OperatorSettings.model_fields:
        assert f"`{name.upper()}`" in doc or f"`{name.upper()} " in doc, name
        assert f"--{name.replace('_', '-')}" in doc, name
