"""The download policy: what a ``--url`` source may connect to, checked where the connection is made.

Local HTTP servers listen on 127.0.0.1 and 127.0.0.2 (Linux routes all of 127/8 to loopback), so
"allowed" and "refused" addresses are both real, and a refused one can be shown never to have seen a
connection.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import pytest
from fetch_support import FAKE_MODEL, Server, make_tar, run

from kubediffusion.fetch.download import PolicyBackend, download
from kubediffusion.fetch.errors import FetchError, RefusedError
from kubediffusion.fetch.main import main
from kubediffusion.fetch.policy import DownloadPolicy, IPAddress, category, display_url, parse_network

ONLY_2 = ("--allow-http", "--allow-network", "127.0.0.2/32")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every address the real socket backend is asked to connect to."""
    seen: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def spy(self: httpcore.SyncBackend, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        seen.append(host)
        return real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", spy)
    yield seen


@pytest.fixture
def model(server2: Server) -> str:
    make_tar(server2.root / "model.tar.gz", FAKE_MODEL)
    return server2.url("model.tar.gz")


def test_the_default_policy_refuses_http(model: str, server2: Server, tmp_path: Path, connects: list[str]) -> None:
    code, summary = run(tmp_path / "model", tmp_path, "--url", model)
    assert code == 2
    assert "scheme 'http' is not allowed" in summary["error"] and "--allow-http" in summary["error"]
    assert connects == [] and server2.connections == 0


def test_the_default_policy_refuses_loopback_even_over_https(tmp_path: Path, connects: list[str]) -> None:
    code, summary = run(tmp_path / "model", tmp_path, "--url", "https://127.0.0.2:9/model.tar.gz")
    assert code == 2 and "blocked range (loopback)" in summary["error"]
    assert connects == []


def test_http_on_loopback_needs_both_opt_ins(model: str, server2: Server, tmp_path: Path) -> None:
    code, summary = run(tmp_path / "model", tmp_path, "--url", model, "--allow-http")
    assert code == 2 and "blocked range (loopback)" in summary["error"]
    assert server2.connections == 0
    code, summary = run(tmp_path / "model", tmp_path, "--url", model, *ONLY_2)
    assert code == 0, summary
    assert (tmp_path / "model" / "model_index.json").read_text() == FAKE_MODEL["model_index.json"]


def test_the_opt_ins_can_come_from_the_environment(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_FETCH_ALLOW_HTTP", "true")
    monkeypatch.setenv("KD_FETCH_ALLOW_NETWORKS", "10.0.0.0/8, 127.0.0.2/32")
    code, summary = run(tmp_path / "model", tmp_path, "--url", model)
    assert code == 0, summary
    monkeypatch.setenv("KD_FETCH_ALLOW_NETWORKS", "127.0.0.1/32")
    code, summary = run(tmp_path / "other", tmp_path, "--url", model)
    assert code == 2 and "loopback" in summary["error"]
    code, summary = run(tmp_path / "other", tmp_path, "--url", model, "--allow-network", "127.0.0.0/30")
    assert code == 0, "a flag wins over its variable"


def test_a_bad_environment_value_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_FETCH_ALLOW_NETWORKS", "not-a-network")
    with pytest.raises(SystemExit) as exit_info:
        main(["--dest", str(tmp_path / "m"), "--url", "https://example.com/m.tar.gz"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_a_refused_address_never_connects(
    model: str, server: Server, server2: Server, tmp_path: Path, connects: list[str], status: int
) -> None:
    make_tar(server.root / "model.tar.gz", FAKE_MODEL)
    server2.redirects["/go.tar.gz"] = (status, server.url("model.tar.gz"))  # to 127.0.0.1, not allowed
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("go.tar.gz"), *ONLY_2)
    assert code == 2
    assert "redirect 1 to" in summary["error"] and "blocked range (loopback)" in summary["error"]
    assert server.connections == 0 and connects == ["127.0.0.2"]
    assert not (tmp_path / "model").exists()


def test_a_redirect_to_cloud_metadata_is_refused(server2: Server, tmp_path: Path, connects: list[str]) -> None:
    server2.redirects["/m.tar.gz"] = (302, "http://169.254.169.254/latest/meta-data/iam?token=secret")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("m.tar.gz"), *ONLY_2)
    assert code == 2 and "blocked range (link-local)" in summary["error"]
    assert "secret" not in summary["error"], "no query strings in the status"
    assert connects == ["127.0.0.2"]


def test_a_redirect_to_another_scheme_is_refused(server2: Server, tmp_path: Path, connects: list[str]) -> None:
    server2.redirects["/m.tar.gz"] = (302, "file:///etc/passwd")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("m.tar.gz"), *ONLY_2)
    assert code == 2 and "scheme 'file' is not allowed" in summary["error"]


def test_redirects_within_the_policy_are_followed(model: str, server2: Server, tmp_path: Path) -> None:
    server2.redirects["/latest"] = (302, "/v2/")
    server2.redirects["/v2/"] = (307, "model.tar.gz")  # relative to /v2/
    server2.redirects["/v2/model.tar.gz"] = (301, model)
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("latest"), *ONLY_2)
    assert code == 0, summary


def test_too_many_redirects_are_refused(server2: Server, tmp_path: Path) -> None:
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("loop/0"), *ONLY_2)
    assert code == 2 and "too many redirects (more than 5)" in summary["error"]
    assert server2.requests[-1] == "/loop/5" and len(server2.requests) == 6
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("loop/0"), *ONLY_2, "--max-redirects", "1")
    assert code == 2 and "more than 1" in summary["error"]


def test_the_final_url_decides_the_archive_type(model: str, server2: Server, tmp_path: Path) -> None:
    (server2.root / "payload.bin").write_bytes(b"MZ not an archive")
    server2.redirects["/model.tar.gz"] = (302, "/payload.bin")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("model.tar.gz"), *ONLY_2)
    assert code == 2 and "payload.bin: not a .tar.gz" in summary["error"]
    server2.redirects["/download"] = (302, "/real.tgz")
    make_tar(server2.root / "real.tgz", FAKE_MODEL)
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("download"), *ONLY_2)
    assert code == 0, "a URL without a suffix that ends at an archive is fine"


def test_a_cdn_blob_is_named_by_its_content_disposition(server2: Server, tmp_path: Path) -> None:
    (server2.root / "blobs").mkdir()
    make_tar(server2.root / "blobs" / "e3b0c442", FAKE_MODEL)
    server2.headers["/blobs/e3b0c442"] = {"Content-Disposition": 'attachment; filename="sd-fake.tar.gz"'}
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("blobs/e3b0c442"), *ONLY_2)
    assert code == 0, summary


def test_errors_carry_the_status_line_not_the_body(server2: Server, tmp_path: Path) -> None:
    server2.answers["/m.tar.gz"] = (403, b"internal: db=10.1.2.3 password=hunter2")
    code, summary = run(tmp_path / "model", tmp_path, "--url", server2.url("m.tar.gz"), *ONLY_2)
    assert code == 2 and "HTTP 403 Forbidden" in summary["error"]
    assert "hunter2" not in summary["error"] and "10.1.2.3" not in summary["error"]
    server2.answers["/m.tar.gz"] = (503, b"busy")
    assert run(tmp_path / "model", tmp_path, "--url", server2.url("m.tar.gz"), *ONLY_2)[0] == 1, "5xx is worth a retry"


def test_a_download_over_the_limit_is_refused(server2: Server, tmp_path: Path) -> None:
    limit = 64 * 1024 + 2048 * 5 + (1 << 20)  # what --max-bytes 64Ki allows to download with --max-members 5
    server2.streams["/stream.tar.gz"] = os.urandom(2 * limit)  # sent without a Content-Length
    policy = DownloadPolicy(allow_http=True, allowed_networks=(parse_network("127.0.0.2"),))
    with pytest.raises(RefusedError, match="larger than the limit"):
        download(server2.url("stream.tar.gz"), tmp_path / "d", policy=policy, max_bytes=limit)
    assert (tmp_path / "d").stat().st_size <= limit
    (server2.root / "huge.tar.gz").write_bytes(b"\0" * (limit + 1))  # refused from its Content-Length
    requests = len(server2.requests)
    with pytest.raises(RefusedError, match="larger than the limit"):
        download(server2.url("huge.tar.gz"), tmp_path / "e", policy=policy, max_bytes=limit)
    assert len(server2.requests) == requests + 1 and not (tmp_path / "e").exists(), "not a byte read"


def _resolver(*addresses: str) -> Any:
    return lambda host, port: [ipaddress.ip_address(a) for a in addresses]


def test_a_name_is_checked_by_what_it_resolves_to(model: str, server2: Server, tmp_path: Path) -> None:
    policy = DownloadPolicy(allow_http=True, allowed_networks=(parse_network("127.0.0.2/32"),))
    url = f"http://models.test:{server2.port}/model.tar.gz"
    got = download(
        url,
        tmp_path / "a",
        policy=policy,
        max_bytes=1 << 20,
        backend=PolicyBackend(policy, resolver=_resolver("127.0.0.2")),
    )
    assert got.name == "model.tar.gz" and got.revision.startswith("sha256:")
    assert server2.request_headers[-1]["Host"] == f"models.test:{server2.port}"
    # One answer inward is enough to refuse the name: no connection at all, and no address in the message.
    backend = PolicyBackend(policy, resolver=_resolver("127.0.0.2", "10.0.0.7"))
    connections = server2.connections
    with pytest.raises(RefusedError) as refused:
        download(url, tmp_path / "b", policy=policy, max_bytes=1 << 20, backend=backend)
    assert "host 'models.test' resolves to an address that is in a blocked range (private)" in str(refused.value)
    assert "10.0.0.7" not in str(refused.value) and server2.connections == connections


def test_the_connected_peer_is_checked_too(model: str, server: Server, server2: Server, tmp_path: Path) -> None:
    """Should the socket end up elsewhere than the address checked (a rebinding resolver, a transparent proxy,
    a bug), the peer address is checked again before a byte is sent."""

    class Misdirected(httpcore.SyncBackend):
        def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            return super().connect_tcp("127.0.0.1", server.port, *args, **kwargs)

    policy = DownloadPolicy(allow_http=True, allowed_networks=(parse_network("127.0.0.2/32"),))
    backend = PolicyBackend(policy, inner=Misdirected())
    with pytest.raises(RefusedError, match="blocked range \\(loopback\\)"):
        download(model, tmp_path / "a", policy=policy, max_bytes=1 << 20, backend=backend)
    assert server.requests == [], "connected, but nothing was sent"


def test_credentials_go_only_to_the_origin_that_was_named(
    model: str, server: Server, server2: Server, tmp_path: Path
) -> None:
    make_tar(server.root / "model.tar.gz", FAKE_MODEL)
    server2.redirects["/m.tar.gz"] = (302, server.url("model.tar.gz"))
    url = server2.url("m.tar.gz").replace("http://", "http://user:pw@")
    code, summary = run(tmp_path / "model", tmp_path, "--url", url, "--allow-http", "--allow-network", "127.0.0.0/30")
    assert code == 0, summary
    assert server2.request_headers[-1]["Authorization"] == "Basic dXNlcjpwdw=="
    assert "Authorization" not in server.request_headers[-1]


def test_allowed_hosts(model: str, tmp_path: Path) -> None:
    code, summary = run(tmp_path / "m", tmp_path, "--url", model, *ONLY_2, "--allow-host", "*.example.com")
    assert code == 2 and "not one of the allowed hosts" in summary["error"]
    assert run(tmp_path / "m", tmp_path, "--url", model, *ONLY_2, "--allow-host", "127.0.0.2")[0] == 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.96.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("198.18.0.1", "reserved"),
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_categories(address: str, expected: str | None) -> None:
    assert category(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "address",
    ["::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a00:1::1"],
)
def test_ipv6_addresses_carrying_a_blocked_ipv4_are_refused(address: str) -> None:
    with pytest.raises(RefusedError, match="blocked range"):
        DownloadPolicy().check_address("h.example", ipaddress.ip_address(address))


def test_an_allowed_network_opens_only_itself() -> None:
    policy = DownloadPolicy(allowed_networks=(parse_network("10.1.0.0/16"), parse_network("fd00::/8")))
    allowed: list[IPAddress] = [ipaddress.ip_address(a) for a in ("10.1.2.3", "fd00::5", "8.8.8.8", "::ffff:10.1.0.1")]
    for address in allowed:
        policy.check_address("h.example", address)
    for refused in ("10.2.0.1", "fc00::1", "127.0.0.1", "::ffff:10.2.0.1"):
        with pytest.raises(RefusedError):
            policy.check_address("h.example", ipaddress.ip_address(refused))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://models.example.com/m.tar.gz", "scheme 'http' is not allowed"),
        ("ftp://models.example.com/m.tar.gz", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher' is not allowed"),
        ("https:///m.tar.gz", "no host"),
        ("https://models.example.com:99999/m.tar.gz", "invalid port"),
        ("https://127.0.0.1/m.tar.gz", "address 127.0.0.1 is in a blocked range (loopback)"),
        ("https://[::1]/m.tar.gz", "blocked range (loopback)"),
        ("https://[::ffff:a9fe:a9fe]/m.tar.gz", "blocked range (link-local)"),
        ("https://bad_host!.example/m.tar.gz", "not a valid host name"),
    ],
)
def test_urls_refused_before_any_connection(url: str, words: str) -> None:
    with pytest.raises(RefusedError, match=words.replace("(", "\\(").replace(")", "\\)")):
        DownloadPolicy().check_url(url)


def test_a_url_is_shown_without_credentials_or_query() -> None:
    target = DownloadPolicy().check_url("https://u:p@models.example.com/a%20b/m.tar.gz?X-Amz-Signature=abc")
    assert target.display() == "https://models.example.com/a%20b/m.tar.gz"
    assert display_url("https://u:p@h.example:8443/x.zip?sig=1") == "https://h.example:8443/x.zip"
    assert DownloadPolicy().check_url("https://h.example/a b.tar.gz").target == "/a%20b.tar.gz"


def test_help_names_every_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in (
        "--allow-http",
        "--allow-network",
        "--allow-host",
        "--max-redirects",
        "--max-bytes",
        "--max-ratio",
        "--max-members",
        "--max-path-length",
        "--max-depth",
        "KD_FETCH_ALLOW_HTTP",
        "KD_FETCH_ALLOW_NETWORKS",
        "KD_FETCH_MAX_BYTES",
    ):
        assert name in text


def test_https_dials_the_checked_address_and_verifies_the_name(
    tls_server: Server, server: Server, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    make_tar(tls_server.root / "model.tar.gz", FAKE_MODEL)
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    policy = DownloadPolicy(allowed_networks=(parse_network("127.0.0.2/32"),))  # https only: the default
    backend = PolicyBackend(policy, resolver=_resolver("127.0.0.2"))
    url = f"https://models.test:{tls_server.port}/model.tar.gz"
    got = download(url, tmp_path / "a", policy=policy, max_bytes=1 << 20, backend=backend, ssl_context=trust)
    assert got.name == "model.tar.gz" and (tmp_path / "a").stat().st_size == got.size
    # The certificate is checked against the URL's name, not the address dialled.
    with pytest.raises(FetchError) as wrong_name:
        download(
            url.replace("models.test", "other.test"),
            tmp_path / "b",
            policy=policy,
            max_bytes=1 << 20,
            backend=backend,
            ssl_context=trust,
        )
    assert not wrong_name.value.permanent and "ConnectError" in str(wrong_name.value)
    # An https server may not send the download to plain http when the policy is https only.
    tls_server.redirects["/down.tar.gz"] = (302, server.url("model.tar.gz"))
    with pytest.raises(RefusedError, match="scheme 'http' is not allowed"):
        download(
            url.replace("model.tar.gz", "down.tar.gz"),
            tmp_path / "c",
            policy=policy,
            max_bytes=1 << 20,
            backend=backend,
            ssl_context=trust,
        )
    assert server.connections == 0
