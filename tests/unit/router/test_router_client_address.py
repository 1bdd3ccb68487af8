"""The client address: the socket peer, or what trusted proxies forwarded; never what a client claims."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kubediffusion.router.client_address import ForwardedHeader, TrustedProxies, parse_ip
from kubediffusion.router.settings import RouterSettings

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
BASE = "http://router.test"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer's header is ignored
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", [""], "10.0.0.2"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # trusted hops skipped, left never read
        ("10.0.0.2", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # one header over several lines
        ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),  # all trusted: the leftmost
        ("10.0.0.2", ["garbage"], "10.0.0.2"),  # malformed where the walk needs it: the peer
        ("10.0.0.2", ["198.51.100.1, garbage"], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.1, "], "10.0.0.2"),
        ("10.0.0.2", ["garbage, 198.51.100.1"], "198.51.100.1"),  # what a client wrote on the left is never read
        ("10.0.0.2", ["198.51.100.1:5678"], "198.51.100.1"),
        ("10.0.0.2", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("10.0.0.2", ["2001:db8::1"], "2001:db8::1"),
        ("10.0.0.2", ["[2001:db8::1"], "10.0.0.2"),
        ("10.0.0.2", ["198.51.100.1:http"], "10.0.0.2"),
        ("10.0.0.2", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),  # a dual-stack socket's view of a trusted proxy
        ("fd00::5", ["198.51.100.1"], "198.51.100.1"),
        ("testclient", ["198.51.100.1"], "testclient"),  # not an address: not a proxy
        (None, ["198.51.100.1"], None),
    ],
)
def test_x_forwarded_for_is_walked_from_the_right_past_trusted_proxies(
    peer: str | None, forwarded: list[str], client: str | None
) -> None:
    assert TrustedProxies(PROXIES).client(peer, forwarded) == client


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (["for=198.51.100.1"], "198.51.100.1"),
        (['for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.2'], "2001:db8:cafe::17"),
        (["for=198.51.100.1;proto=http, for=10.0.0.3"], "198.51.100.1"),
        (["for=unknown"], "10.0.0.2"),
        (["for=_hidden"], "10.0.0.2"),
        (["proto=https"], "10.0.0.2"),
    ],
)
def test_rfc_7239_forwarded_is_read_when_chosen(forwarded: list[str], client: str) -> None:
    assert TrustedProxies(PROXIES, "forwarded").client("10.0.0.2", forwarded) == client


def test_parse_ip_accepts_what_proxies_write_and_nothing_else() -> None:
    assert str(parse_ip("1.2.3.4")) == str(parse_ip(" 1.2.3.4:80 ")) == "1.2.3.4"
    for bad in ("", "unknown", "1.2.3", "1.2.3.4:", "1.2.3.4:\u0664", "[::1]x", "999.1.1.1", "example.com"):
        assert parse_ip(bad) is None, bad


@asynccontextmanager
async def client_from(app: Any, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def statuses(client: httpx.AsyncClient, spoofs: list[str], header: str = "X-Forwarded-For") -> list[int]:
    return [
        (await client.post("/v1/images/generations", json={"prompt": "x"}, headers={header: spoof})).status_code
        for spoof in spoofs
    ]


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_rate_limit(router: Any) -> None:
    async with (
        router(rate_limit_rps=0.001, rate_limit_burst=2) as app_client,
        client_from(app_client.app, "203.0.113.9") as client,
    ):
        codes = await statuses(client, [f"198.51.100.{i}" for i in range(5)])
    assert codes == [200, 200, 429, 429, 429]


async def test_untrusted_is_the_default_even_for_loopback(router: Any) -> None:
    async with router(rate_limit_rps=0.001, rate_limit_burst=1) as client:  # ASGITransport's peer is 127.0.0.1
        assert await statuses(client, ["198.51.100.1", "198.51.100.2"]) == [200, 429]


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(router: Any) -> None:
    async with router(rate_limit_rps=0.001, rate_limit_burst=1, trusted_proxies="10.0.0.0/8") as app_client:
        async with client_from(app_client.app, "10.0.0.2") as proxy:
            distinct = await statuses(proxy, ["198.51.100.1", "198.51.100.2", "6.6.6.6, 198.51.100.3"])
            same = await statuses(proxy, ["198.51.100.1", "7.7.7.7, 198.51.100.1"])
        async with client_from(app_client.app, "203.0.113.9") as outsider:  # not a proxy: its header is ignored
            ignored = await statuses(outsider, ["198.51.100.4", "198.51.100.5"])
    assert distinct == [200, 200, 200]
    assert same == [429, 429]  # the same client, however the part left of it is rotated
    assert ignored == [200, 429]


@pytest.mark.parametrize(("chosen", "ignored"), [("forwarded", "X-Forwarded-For"), ("x-forwarded-for", "Forwarded")])
async def test_only_the_chosen_forwarded_header_is_read(router: Any, chosen: ForwardedHeader, ignored: str) -> None:
    settings = {"trusted_proxies": "10.0.0.0/8", "forwarded_header": chosen}
    spoofs = ["for=198.51.100.1", "for=198.51.100.2"] if ignored == "Forwarded" else ["198.51.100.1", "1.1.1.1"]
    async with (
        router(rate_limit_rps=0.001, rate_limit_burst=1, **settings) as app_client,
        client_from(app_client.app, "10.0.0.2") as proxy,
    ):
        codes = await statuses(proxy, spoofs, header=ignored)
    assert codes == [200, 429]  # both counted against the proxy itself


def test_trusted_proxies_setting_takes_json_or_commas_and_refuses_bad_cidrs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RouterSettings().trusted_proxies == []
    monkeypatch.setenv("KD_ROUTER_TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8,192.0.2.7")
    assert [str(n) for n in RouterSettings().trusted_proxies] == ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]
    monkeypatch.setenv("KD_ROUTER_TRUSTED_PROXIES", '["10.1.0.0/16"]')
    assert [str(n) for n in RouterSettings().trusted_proxies] == ["10.1.0.0/16"]
    for bad in ("10.0.0.1/8", "proxy.example", "[1"):
        monkeypatch.setenv("KD_ROUTER_TRUSTED_PROXIES", bad)
        with pytest.raises(ValidationError):
            RouterSettings()
