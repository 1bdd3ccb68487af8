"""Where a model download may go: the download policy that keeps a URL source from being aimed inward (SSRF).

- Schemes: https only; http with ``--allow-http``.
- Hosts: any, or only those of ``--allow-host`` (``models.example.com``, or ``*.example.com``).
- Addresses: never loopback, link-local (cloud metadata at 169.254.169.254), private, CGNAT, unspecified,
  multicast or reserved (documentation, benchmarking, 240/4, ...) unless an ``--allow-network`` CIDR holds
  the address. IPv6 addresses that carry an IPv4 one (mapped, 6to4, NAT64, Teredo) are judged by it too.
  The ranges are listed here rather than taken from ``ipaddress.is_global``/``is_private``, whose answers
  changed between patch releases and which cannot name the range a refusal is about.
- Redirects: followed one at a time by :mod:`kubediffusion.fetch.download`, each checked here, at most
  ``max_redirects``.

The address check is applied to what is connected to: :class:`kubediffusion.fetch.download.PolicyBackend`
resolves the name, checks every address, connects to a checked address (never resolving twice, so DNS
rebinding has nothing to rebind) and checks the socket's peer again. A refusal names the host as the URL
wrote it and the range's category, never an address a name resolved to (that would map the cluster's
internal DNS for whoever can create an ImageModel).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from kubediffusion.fetch.errors import AddressRefused, RefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5

_BLOCKED_RANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8", "::/128")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("shared address space (CGNAT)", ("100.64.0.0/10",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    (
        "reserved",
        (
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # documentation
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",  # documentation
            "203.0.113.0/24",  # documentation
            "240.0.0.0/4",  # reserved, and the broadcast address
            "::/96",  # IPv4-compatible (deprecated)
            "100::/64",  # discard-only
            "2001:db8::/32",  # documentation
            "fec0::/10",  # site-local (deprecated)
        ),
    ),
)
BLOCKED: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = tuple(
    (category, tuple(ipaddress.ip_network(cidr) for cidr in cidrs)) for category, cidrs in _BLOCKED_RANGES
)
_SAFE = "/%:@!$&'()*+,;=-._~"  # what stays as it is in a path (the rest is percent-encoded, as httpx did)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")


def category(address: IPAddress) -> str | None:
    """The blocked range ``address`` falls in ("loopback", "private", ...), or None for a public address."""
    for name, networks in BLOCKED:
        if any(address in network for network in networks):
            return name
    return None


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The IPv4 addresses an IPv6 address carries, which is where a packet to it ends up."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[IPAddress] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


@dataclass(frozen=True)
class Target:
    """A URL the policy let through, split the way it will be connected to."""

    url: str
    scheme: str
    host: str  # lower case, IDNA-encoded, IPv6 without brackets
    port: int
    target: str  # path and query, as sent in the request line
    username: str | None
    password: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def netloc(self) -> str:
        """``host[:port]`` for the Host header (brackets around IPv6; the port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    def display(self) -> str:
        """For messages: no credentials, no query string (a presigned URL's signature stays out of the status)."""
        return f"{self.scheme}://{self.netloc}{self.target.split('?', 1)[0]}"


@dataclass(frozen=True)
class DownloadPolicy:
    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # empty: any host
    max_redirects: int = MAX_REDIRECTS

    def check_url(self, url: str, *, what: str = "URL") -> Target:
        """Split ``url`` and refuse it unless its scheme and host are allowed (addresses come at connect time)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or (scheme == "http" and not self.allow_http):
            allowed = "https or http" if self.allow_http else "https only; http needs --allow-http"
            raise RefusedError(f"{what} refused: scheme {scheme or '(none)'!r} is not allowed ({allowed})")
        host = self._host(parts, what)
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise RefusedError(f"{what} refused: it has an invalid port") from exc
        path, query = quote(parts.path or "/", safe=_SAFE), quote(parts.query, safe=_SAFE + "?")
        target = path + (f"?{query}" if query else "")
        return Target(url, scheme, host, port, target, parts.username, parts.password)

    def _host(self, parts: SplitResult, what: str) -> str:
        host = parts.hostname
        if not host:
            raise RefusedError(f"{what} refused: it has no host")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is None:
            try:
                host = host.encode("idna").decode("ascii").lower()
            except UnicodeError as exc:
                raise RefusedError(f"{what} refused: {host!r} is not a valid host name") from exc
            if not _HOSTNAME.match(host):
                raise RefusedError(f"{what} refused: {host!r} is not a valid host name")
        else:
            host = str(literal)
        if self.allowed_hosts and not any(_host_matches(host, pattern) for pattern in self.allowed_hosts):
            raise RefusedError(f"{what} refused: host {host!r} is not one of the allowed hosts (--allow-host)")
        if literal is not None:  # a literal address is refused before any connection
            try:
                self.check_address(host, literal)
            except AddressRefused as exc:
                raise RefusedError(f"{what} refused: {exc}") from exc
        return host

    def check_address(self, host: str, address: IPAddress) -> None:
        """Refuse ``address`` (what ``host`` resolved to) unless it is public or in an allowed network."""
        if any(address in network for network in self.allowed_networks if network.version == address.version):
            return
        for candidate in (address, *_embedded(address)):
            if any(candidate in network for network in self.allowed_networks if network.version == candidate.version):
                continue
            blocked = category(candidate)
            if blocked is not None:
                subject = f"address {host}" if _is_literal(host) else f"host {host!r} resolves to an address that"
                raise AddressRefused(
                    f"{subject} is in a blocked range ({blocked}); the download policy allows it only with"
                    " --allow-network"
                )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    host = host.rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def display_url(url: str) -> str:
    """``url`` for a message before it was checked: no credentials, no query string."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an invalid URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def parse_network(text: str) -> IPNetwork:
    """A CIDR (``10.0.0.0/8``) or a single address (``10.1.2.3``, taken as /32 or /128)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP network (CIDR such as 10.0.0.0/8)") from exc
