"""`kubediffusion local` trusts no proxy by default, whatever the environment says, and --trusted-proxy
(repeatable) names the ones it should. Its router runs here on a free port, without a model."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from kubediffusion.local import free_port, parse_args, router_server, static_config

pytestmark = pytest.mark.timeout(60)


def test_trusted_proxy_flag_is_repeatable_and_checked() -> None:
    assert parse_args([]).trusted_proxy == []
    args = parse_args(["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy=fd00::/8"])
    assert args.trusted_proxy == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    with pytest.raises(SystemExit) as exited:
        parse_args(["--trusted-proxy", "proxy.example"])
    assert exited.value.code == 2


@contextmanager
def local_router(tmp_path: Path, trusted: list[str]) -> Iterator[str]:
    config = tmp_path / "models.yaml"
    config.write_text(static_config("tiny-sd", ["http://127.0.0.1:9"]))  # no pod: requests end in 503
    port = free_port()
    server = router_server(
        config, tmp_path / "images", port, trusted_proxies=[ipaddress.ip_network(cidr) for cidr in trusted]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the router did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def statuses_with_rotating_forwarded_for(url: str) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [
            client.post(
                "/v1/images/generations", json={"prompt": "x"}, headers={"X-Forwarded-For": f"198.51.100.{i}"}
            ).status_code
            for i in range(3)
        ]


@pytest.fixture(autouse=True)
def tight_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_ROUTER_RATE_LIMIT_RPS", "0.001")
    monkeypatch.setenv("KD_ROUTER_RATE_LIMIT_BURST", "2")
    monkeypatch.setenv("KD_ROUTER_TRUSTED_PROXIES", "127.0.0.0/8")  # local must not take this up
    monkeypatch.setenv("KD_ROUTER_SIGNING_KEY", "k" * 32)


def test_local_ignores_x_forwarded_for_by_default(tmp_path: Path) -> None:
    with local_router(tmp_path, trusted=[]) as url:
        codes = statuses_with_rotating_forwarded_for(url)
    assert codes[2] == 429 and 429 not in codes[:2]


def test_local_believes_x_forwarded_for_from_a_trusted_proxy(tmp_path: Path) -> None:
    with local_router(tmp_path, trusted=["127.0.0.1/32"]) as url:
        codes = statuses_with_rotating_forwarded_for(url)
    assert 429 not in codes
