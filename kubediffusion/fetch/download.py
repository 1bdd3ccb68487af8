"""Downloading an archive under the download policy (:mod:`kubediffusion.fetch.policy`).

httpcore rather than httpx, for two documented hooks httpx does not expose: a network backend (so the
address check sits in the one place a connection is made) and nothing done implicitly (no redirects,
no proxies from the environment, no content decoding: the bytes hashed are the bytes served).
Redirects are followed here, one hop at a time, each re-checked before it is connected to.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpcore

from kubediffusion.fetch.archive import ARCHIVE_SUFFIXES, archive_suffix
from kubediffusion.fetch.errors import AddressRefused, FetchError, RefusedError
from kubediffusion.fetch.policy import DownloadPolicy, IPAddress, Target, display_url

CHUNK = 1 << 20
REDIRECTS = (301, 302, 303, 307, 308)
TIMEOUTS = {"connect": 30.0, "read": 300.0, "write": 30.0, "pool": 30.0}
USER_AGENT = b"kubediffusion-fetch-model"

Resolver = Callable[[str, int], Sequence[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"could not resolve host {host!r}") from exc
    found: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class PolicyBackend(httpcore.NetworkBackend):
    """Connects only where the policy allows.

    The name is resolved here, once; every address is checked (one blocked address refuses the host:
    a name that also points inward is not a name to trust); the connection goes to a checked address,
    so a second, different DNS answer (rebinding) is never used; and the connected socket's peer is
    checked again. TLS still verifies the certificate for the URL's host name (httpcore passes it as
    the server name whatever address was dialled).
    """

    def __init__(
        self, policy: DownloadPolicy, *, inner: httpcore.NetworkBackend | None = None, resolver: Resolver = resolve
    ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()
        self.resolver = resolver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses: Sequence[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = self.resolver(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"could not resolve host {host!r}")
        for address in addresses:
            self.policy.check_address(host, address)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = self.inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            try:
                self._check_peer(host, stream)
            except BaseException:
                stream.close()
                raise
            return stream
        assert failure is not None
        raise failure

    def _check_peer(self, host: str, stream: httpcore.NetworkStream) -> None:
        peer = stream.get_extra_info("server_addr")
        if not isinstance(peer, tuple) or not peer:
            raise AddressRefused(f"the connection to {host!r} has no peer address to check")
        self.policy.check_address(host, ipaddress.ip_address(str(peer[0]).split("%", 1)[0]))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise AddressRefused("unix sockets are not allowed by the download policy")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Downloaded:
    url: str  # the final URL, for messages (no credentials, no query)
    name: str  # the file name whose suffix says the archive type
    revision: str  # sha256:<hex> of the bytes
    size: int


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _headers(target: Target, auth: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"Host", target.netloc.encode("ascii")),
        (b"User-Agent", USER_AGENT),
        (b"Accept-Encoding", b"identity"),
    ]
    return [*headers, (b"Authorization", auth)] if auth else headers


def _basic_auth(target: Target) -> bytes | None:
    if target.username is None:
        return None
    credentials = f"{unquote(target.username)}:{unquote(target.password or '')}".encode()
    return b"Basic " + base64.b64encode(credentials)


def archive_name(target: Target, response: httpcore.Response, also: Sequence[str] = ()) -> str:
    """The final URL's file name if it names an archive (or ends with one of ``also``: a weights file);
    else the final response's Content-Disposition name (a CDN blob path such as a GitHub release asset's
    or a Hugging Face file's); else the final URL is refused."""

    def accepted(name: str) -> bool:
        return bool(archive_suffix(name)) or name.lower().endswith(tuple(also))

    name = unquote(urlsplit(target.target).path).rsplit("/", 1)[-1]
    if accepted(name):
        return name
    disposition = _header(response, b"content-disposition")
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        filename = (message.get_filename() or "").replace("\\", "/").rsplit("/", 1)[-1]
        if accepted(filename):
            return filename
    suffixes = ", ".join((*ARCHIVE_SUFFIXES, *also))
    raise RefusedError(f"{target.display()}: not a {suffixes} file (the final URL is checked, after redirects)")


def _save(response: httpcore.Response, into: Path, target: Target, max_bytes: int) -> tuple[str, int]:
    too_big = f"{target.display()}: the archive is larger than the limit of {max_bytes} bytes (--max-bytes)"
    length = _header(response, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise RefusedError(too_big)
    digest = hashlib.sha256()
    size = 0
    with into.open("wb") as out:
        for chunk in response.iter_stream():
            size += len(chunk)
            if size > max_bytes:
                raise RefusedError(too_big)
            digest.update(chunk)
            out.write(chunk)
    return f"sha256:{digest.hexdigest()}", size


def _failed(target: Target, response: httpcore.Response) -> FetchError:
    """The status line only: what a server answers beyond it stays out of the ImageModel's status."""
    status = response.status
    reason = response.extensions.get("reason_phrase", b"")
    reason_text = reason.decode("ascii", "replace") if isinstance(reason, bytes) else ""
    transient = status in (408, 429) or status >= 500
    return FetchError(f"GET {target.display()}: HTTP {status} {reason_text}".rstrip(), permanent=not transient)


def download(
    url: str,
    into: Path,
    *,
    policy: DownloadPolicy,
    max_bytes: int,
    backend: httpcore.NetworkBackend | None = None,
    ssl_context: ssl.SSLContext | None = None,
    also: Sequence[str] = (),
) -> Downloaded:
    """Stream ``url`` into the file ``into``, following at most ``policy.max_redirects`` checked redirects.

    ``ssl_context`` None: httpcore's default (certifi's CA bundle, as httpx used). ``also``: file
    suffixes accepted besides archives (``.safetensors`` for an adapter's or a component's weights).
    """
    target = policy.check_url(url)
    first_origin, auth = target.origin, _basic_auth(target)
    backend = backend or PolicyBackend(policy)
    pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend, retries=0)
    try:
        with pool:
            for hop in range(policy.max_redirects + 1):
                request_url = httpcore.URL(
                    scheme=target.scheme, host=target.host, port=target.port, target=target.target
                )
                hop_auth = auth if target.origin == first_origin else None  # never sent to another origin
                with pool.stream(
                    "GET", request_url, headers=_headers(target, hop_auth), extensions={"timeout": TIMEOUTS}
                ) as response:
                    if response.status in REDIRECTS:
                        location = _header(response, b"location")
                        if not location:
                            raise FetchError(f"GET {target.display()}: HTTP {response.status} without a Location")
                        if hop == policy.max_redirects:
                            raise RefusedError(
                                f"GET {display_url(url)}: too many redirects (more than {policy.max_redirects})"
                            )
                        following = urljoin(target.url, location.strip())
                        target = policy.check_url(following, what=f"redirect {hop + 1} to {display_url(following)}")
                        continue
                    if response.status != 200:
                        raise _failed(target, response)
                    name = archive_name(target, response, also)
                    revision, size = _save(response, into, target, max_bytes)
                    return Downloaded(target.display(), name, revision, size)
    except AddressRefused as exc:  # from the backend, when connecting
        raise RefusedError(f"GET {target.display()} refused: {exc}") from exc
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise FetchError(f"GET {target.display()}: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
