"""Who sent a request: the socket peer, or, behind trusted proxies, the address they forwarded.

The address keys the per-client rate limit (auth off), the failed-authentication throttle and log
lines, so it must not be something a client can choose. A forwarded header is read only when the
socket peer is one of ``KD_ROUTER_TRUSTED_PROXIES`` (none by default: the peer is the client).
Proxies append the address they received the request from, so the chain is walked from the right,
skipping hops that are themselves trusted proxies; the first untrusted one is the client. What a
client wrote further left is never read, however it rotates it. If every hop is trusted, the leftmost
is taken. A hop that is not an IP address (garbage, ``unknown``, an obfuscated RFC 7239 identifier)
where the walk needs one means the header cannot be trusted: the peer is used.

``X-Forwarded-For`` (``1.2.3.4, 10.0.0.7``) or RFC 7239 ``Forwarded`` (``for=1.2.3.4;proto=https,
for="[2001:db8::1]:443"``): exactly one, chosen by ``KD_ROUTER_FORWARDED_HEADER``. Reading both would let
a client fill in the one its proxy does not write.

:class:`ClientAddressMiddleware` puts the result in the ASGI scope's ``client``, so every later reader
(``request.client``, the limiter, the error handlers' log lines) sees the same address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]


def parse_ip(value: str) -> IPAddress | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``,
    ``[2001:db8::1]:443``), or None."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
    elif value.count(":") == 1:
        value, _, port = value.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:10.0.0.1 is 10.0.0.1
    return address


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def forwarded_hops(values: Sequence[str], header: ForwardedHeader) -> list[str]:
    """The hops of all the header's lines, leftmost first (one header may be split over several lines)."""
    hops = [hop.strip() for value in values for hop in value.split(",")]
    if header == "x-forwarded-for":
        return hops
    found = []
    for element in hops:
        pairs = (pair.partition("=") for pair in element.split(";"))
        found.append(next((value for key, _, value in pairs if key.strip().lower() == "for"), ""))
    return found


class TrustedProxies:
    def __init__(self, networks: Sequence[IPNetwork], header: ForwardedHeader = "x-forwarded-for") -> None:
        self.networks = tuple(networks)
        self.header = header

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded: Sequence[str]) -> str | None:
        """The client's address, given the socket ``peer`` and the lines of the forwarded header."""
        if not self.trusts(parse_ip(peer or "")) or not forwarded:
            return peer
        hops = forwarded_hops(forwarded, self.header)
        leftmost: IPAddress | None = None
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                return peer
            if not self.trusts(address):
                return str(address)
            leftmost = address
        return str(leftmost) if leftmost is not None else peer


class ClientAddressMiddleware:
    """Sets ``scope["client"]`` to the address :class:`TrustedProxies` finds (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies
        self.header_name = proxies.header.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.proxies.networks:
            peer = scope.get("client")
            forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == self.header_name]
            host = self.proxies.client(peer[0] if peer else None, forwarded)
            if host is not None and (peer is None or host != peer[0]):
                scope = {**scope, "client": (host, 0)}
        await self.app(scope, receive, send)
