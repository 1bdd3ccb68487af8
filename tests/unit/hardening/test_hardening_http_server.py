"""Both apps behind a real uvicorn on 127.0.0.1, with the protocol ``main`` gives it, over raw sockets:
what a malformed Content-Length gets under each HTTP parser, and slow clients (slowloris) cut off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kubediffusion.api.headertimeout import http_protocol
from kubediffusion.inference.app import create_app as create_inference_app
from kubediffusion.local import free_port
from kubediffusion.router.app import create_app as create_router_app
from kubediffusion.router.discovery import StaticDiscovery
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.settings import RouterSettings
from tests.unit.inference.fakes import FakeBackend, settings_for

pytestmark = pytest.mark.timeout(60)

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.3
# httptools is a dependency (what the servers run on); h11 is uvicorn's fallback without it: both are tested,
# and neither may be skipped.
PARSERS = ["h11", "httptools"]


BODY = b'{"prompt": "a"}'
SLOW_BODY = b'{"prompt":"zz"}'  # as long as BODY; the router's pod takes longer than the header deadline


async def pod(request: httpx.Request) -> httpx.Response:
    if request.content == SLOW_BODY:
        await asyncio.sleep(2 * HEADER_TIMEOUT)  # a request that is running is not cut by the header deadline
    return httpx.Response(200, json={"created": 1, "data": [{"b64_json": "AAAA"}]})


def router_app(tmp_path: Path) -> Any:
    settings = RouterSettings(
        discovery="static",
        storage_dir=tmp_path / "images",
        signing_key="s" * 32,
        global_rate_limit_rps=0,
        body_read_timeout=BODY_TIMEOUT,
        header_read_timeout=HEADER_TIMEOUT,
    )
    table = RoutingTable([ModelEntry(name="tiny", endpoints=("http://127.0.9.1:8000",))])
    return create_router_app(settings, discovery=StaticDiscovery(table=table), transport=httpx.MockTransport(pod))


def inference_app(tmp_path: Path) -> Any:
    settings = settings_for(tmp_path, warmup=False, body_read_timeout=BODY_TIMEOUT, header_read_timeout=HEADER_TIMEOUT)
    backend = FakeBackend()
    return create_inference_app(settings, lambda _: backend)


@contextmanager
def serving(app: Any, parser: str) -> Iterator[int]:
    """uvicorn as ``main`` runs it, on a free port, in a thread; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
        http=http_protocol(HEADER_TIMEOUT, parser),
    )
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not served.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        if app.title == "KubeDiffusion inference":
            while app.state.server.phase != "ready":
                assert time.monotonic() < deadline, "the model did not load"
                time.sleep(0.02)
        yield port
    finally:
        served.should_exit = True
        thread.join(10)


# The tests open connections of their own only, so one server serves all of a module's tests.
@pytest.fixture(scope="module", params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=["router", "inference"])
def server(
    request: pytest.FixtureRequest, parser: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, str]]:
    """Each app (its own body guard) behind each parser: (port, parser)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    app = router_app(tmp_path) if request.param == "router" else inference_app(tmp_path)
    with serving(app, parser) as port:
        yield port, parser


@pytest.fixture(scope="module")
def router_server(parser: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The header deadline is the protocol's, the same class for both apps: the router's app (whose pod
    can be slower than the deadline) is enough to show it."""
    with serving(router_app(tmp_path_factory.mktemp("router")), parser) as port:
        yield port, parser


def exchange(port: int, parts: list[bytes | float], *, wait: float = 5.0) -> tuple[bytes, bool]:
    """Send ``parts`` (a number: pause that long; a send the server refuses ends the sending), then read
    until the server closes (True) or ``wait`` seconds pass (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        for part in parts:
            if isinstance(part, float):
                time.sleep(part)
                continue
            try:
                sock.sendall(part)
            except OSError:  # closed on us: what was answered is still to be read
                break
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
        return received, True


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def is_envelope(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    return b"content-type: application/json" in head.lower() and body.startswith(b'{"error":')


def request_head(*headers: bytes) -> bytes:
    lines = [b"POST /v1/images/generations HTTP/1.1", b"Host: app.test", b"Content-Type: application/json", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# Content-Length variants: what the HTTP parser answers itself (plain text), and what reaches the app
# (which answers with the envelope). The table in kubediffusion/api/bodylimit.py's docstring.
PARSER_REFUSES = "parser's plain-text 400"
APP_REFUSES = "the app's 400 envelope"
APP_SERVES = "served"
APP_413 = "the app's 413 envelope"
CONTENT_LENGTHS: list[tuple[str, list[bytes], dict[str, str]]] = [
    ("abc", [b"Content-Length: abc"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("empty", [b"Content-Length: "], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("-1", [b"Content-Length: -1"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("+15", [b"Content-Length: +15"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("1_5", [b"Content-Length: 1_5"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("0xf", [b"Content-Length: 0xf"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("15.0", [b"Content-Length: 15.0"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("15,16", [b"Content-Length: 15,16"], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    (
        "two values",
        [b"Content-Length: 15", b"Content-Length: 16"],
        {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES},
    ),
    ("21 digits", [b"Content-Length: " + b"9" * 21], {"h11": PARSER_REFUSES, "httptools": PARSER_REFUSES}),
    ("20 digits", [b"Content-Length: " + b"9" * 20], {"h11": APP_413, "httptools": PARSER_REFUSES}),
    ("15, 15", [b"Content-Length: 15, 15"], {"h11": APP_SERVES, "httptools": PARSER_REFUSES}),
    ("twice 15", [b"Content-Length: 15", b"Content-Length: 15"], {"h11": APP_SERVES, "httptools": PARSER_REFUSES}),
    ("whitespace", [b"Content-Length: 15 \t"], {"h11": APP_SERVES, "httptools": APP_SERVES}),
    ("leading zeros", [b"Content-Length: 0015"], {"h11": APP_SERVES, "httptools": APP_SERVES}),
    (
        "with chunked",
        [b"Content-Length: 15", b"Transfer-Encoding: chunked"],
        {"h11": APP_REFUSES, "httptools": PARSER_REFUSES},
    ),
]


@pytest.mark.parametrize(("headers", "outcomes"), [c[1:] for c in CONTENT_LENGTHS], ids=[c[0] for c in CONTENT_LENGTHS])
def test_each_content_length_is_answered_by_the_parser_or_by_the_app_with_the_envelope(
    server: tuple[int, str], headers: list[bytes], outcomes: dict[str, str]
) -> None:
    port, parser = server
    chunked = any(b"chunked" in header for header in headers)
    body = b"f\r\n" + BODY + b"\r\n0\r\n\r\n" if chunked else BODY
    response, closed = exchange(port, [request_head(*headers, b"Connection: close") + body])
    status = status_of(response)
    expected = outcomes[parser]
    if expected == PARSER_REFUSES:
        assert status == 400 and not is_envelope(response), response
    elif expected == APP_REFUSES:
        assert status == 400 and is_envelope(response) and b"invalid_content_length" in response, response
    elif expected == APP_413:
        assert status == 413 and is_envelope(response), response
    else:
        assert status != 400 and status < 500, response
    assert closed


def test_content_length_with_chunked_is_refused_and_the_connection_closed_even_if_kept_alive(
    server: tuple[int, str],
) -> None:
    port, _ = server
    head = request_head(b"Content-Length: 15", b"Transfer-Encoding: chunked")
    response, closed = exchange(port, [head + b"f\r\n" + BODY + b"\r\n0\r\n\r\n"], wait=3)
    assert status_of(response) == 400 and closed


def test_a_body_that_stalls_gets_408_and_the_connection_closed(server: tuple[int, str]) -> None:
    port, _ = server
    started = time.monotonic()
    response, closed = exchange(port, [request_head(b"Content-Length: 15") + b'{"prom'], wait=5)
    assert status_of(response) == 408 and is_envelope(response) and b"request_timeout" in response
    assert b"connection: close" in response.lower() and closed
    assert time.monotonic() - started < 3


def test_headers_that_trickle_in_get_408_and_the_connection_closed(router_server: tuple[int, str]) -> None:
    port, _ = router_server
    started = time.monotonic()
    trickle: list[bytes | float] = [b"POST /v1/images/generations HTTP/1.1\r\n"]
    for i in range(20):
        trickle += [0.1, b"X-Slow-%d: 1\r\n" % i]
    response, closed = exchange(port, trickle, wait=5)
    assert status_of(response) == 408 and is_envelope(response) and closed
    assert time.monotonic() - started < 2 * HEADER_TIMEOUT + 1


def test_a_connection_that_sends_nothing_is_closed_silently(router_server: tuple[int, str]) -> None:
    port, _ = router_server
    response, closed = exchange(port, [], wait=5)
    assert response == b"" and closed


def test_a_prompt_client_is_served_and_its_idle_keep_alive_connection_then_closed(
    router_server: tuple[int, str],
) -> None:
    port, _ = router_server
    response, closed = exchange(port, [0.3, request_head(b"Content-Length: 15") + SLOW_BODY], wait=5)
    assert status_of(response) == 200 and response.count(b"HTTP/1.1 ") == 1
    assert closed  # no next request within the deadline: closed (uvicorn's keep-alive alone waits 5 s)


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_the_next_request_on_a_kept_alive_connection_gets_its_own_deadline(router_server: tuple[int, str]) -> None:
    port, _ = router_server
    request = request_head(b"Content-Length: 15") + SLOW_BODY
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        first = read_response(sock)  # the router's pod takes longer than the deadline: not cut
        sock.sendall(request[:20])
        time.sleep(2 * HEADER_TIMEOUT)
        with contextlib.suppress(OSError):
            sock.sendall(request[20:])
        rest = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                rest += chunk
    assert status_of(first) == 200
    assert status_of(rest) == 408 and is_envelope(rest)


def test_an_early_answers_body_is_drained_while_it_moves_and_closed_when_it_stops(
    router_server: tuple[int, str],
) -> None:
    """A 413 goes out before the body is read; a client may only read it once it has sent its body, so
    the connection must stay open while that body still moves, longer than the header deadline."""
    port, _ = router_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request_head(b"Content-Length: 2000000") + b"x" * 1000)
        answer = read_response(sock)
        for _ in range(8):  # 1.6 s of a slow upload: over three header deadlines
            time.sleep(0.2)
            sock.sendall(b"x" * 1000)
        stopped = time.monotonic()
        rest = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                rest += chunk
    assert status_of(answer) == 413 and is_envelope(answer)
    assert rest == b""  # closed without a second answer
    assert time.monotonic() - stopped < 2 * HEADER_TIMEOUT + 1


def test_a_client_that_drops_mid_upload_is_one_info_line(
    server: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_head(b"Content-Length: 15") + b'{"prom')
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while "disconnected while sending" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
        time.sleep(0.2)  # room for anything else that would be logged about it
    records = [r for r in caplog.records if r.name.startswith(("kubediffusion", "uvicorn"))]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.INFO, "client 127.0.0.1 disconnected while sending POST /v1/images/generations", None)
    ]
