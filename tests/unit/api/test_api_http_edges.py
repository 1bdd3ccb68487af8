"""The shared HTTP edges of both services: the body guard (framing, size, stalls), a client gone
mid-upload, and error envelopes that render whatever client text they echo."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI, Request

from kubediffusion.api.bodylimit import BodyLimitMiddleware, framing_error
from kubediffusion.api.errors import (
    BadFramingError,
    ModelNotFoundError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    error_response,
    install_error_handlers,
    validation_error_from_pydantic,
)
from tests.unit.hardening.asgi_upload import HANG_UP, Message, chunk, upload

pytestmark = pytest.mark.timeout(30)


def app_reading_the_body(*, max_bytes: int = 1024, read_timeout: float | None = 0.2) -> tuple[FastAPI, list[bytes]]:
    """An app whose one route reads the whole body, behind the guard; ``bodies`` lists what it read."""
    bodies: list[bytes] = []
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        bodies.append(await request.body())
        return {"bytes": len(bodies[-1])}

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes, read_timeout=read_timeout)
    return app, bodies


async def call(
    app: Any, script: list[Message | float], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """One POST /upload from 10.1.2.3 (see :func:`tests.unit.hardening.asgi_upload.upload`)."""
    return await upload(app, script, path="/upload", headers=headers, client=("10.1.2.3", 1234))


def assert_envelope(body: bytes, code: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"4")], None),
        ([(b"content-length", b"00004")], None),  # leading zeros are digits (both parsers pass them on)
        ([(b"content-length", b"4 ")], None),  # httptools passes whitespace around the value on: it is not part of it
        ([(b"content-length", b"\t4")], None),
        ([(b"transfer-encoding", b"chunked")], None),
        ([], None),
        ([(b"content-length", b"2048")], RequestTooLargeError),
        ([(b"content-length", b"99999999999999999999")], RequestTooLargeError),  # 20 digits: h11 passes it on
        ([(b"content-length", b"4"), (b"transfer-encoding", b"chunked")], BadFramingError),  # h11 passes both on
        ([(b"content-length", b"abc")], BadFramingError),
        ([(b"content-length", b"")], BadFramingError),
        ([(b"content-length", b"-1")], BadFramingError),
        ([(b"content-length", b"+4")], BadFramingError),  # int() would say 4
        ([(b"content-length", b"1_0")], BadFramingError),  # int() would say 10
        ([(b"content-length", b"0x4")], BadFramingError),
        ([(b"content-length", b"4.0")], BadFramingError),
        ([(b"content-length", b"4, 4")], BadFramingError),
        ([(b"content-length", b"4"), (b"content-length", b"4")], BadFramingError),
        ([(b"content-length", "\u0664".encode())], BadFramingError),  # an Arabic-Indic four
    ],
)
def test_content_length_and_transfer_encoding_are_checked_strictly(
    headers: list[tuple[bytes, bytes]], expected: type[Exception] | None
) -> None:
    error = framing_error(headers, max_bytes=1024)
    assert (type(error) if error is not None else None) is expected


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"abc")],
        [(b"content-length", b"+4")],
        [(b"content-length", b"4"), (b"transfer-encoding", b"chunked")],
    ],
)
async def test_a_bad_content_length_is_a_400_envelope_and_closes_the_connection(
    headers: list[tuple[bytes, bytes]],
) -> None:
    app, bodies = app_reading_the_body()
    status, response_headers, body = await call(app, [chunk(b"abcd", more=False)], headers)
    assert status == 400 and response_headers[b"connection"] == b"close"
    assert_envelope(body, "invalid_content_length")
    assert bodies == []  # the route never ran


async def test_a_declared_or_streamed_body_over_the_limit_is_413() -> None:
    app, bodies = app_reading_the_body(max_bytes=1024)
    declared = await call(app, [], [(b"content-length", b"1025")])
    streamed = await call(app, [chunk(b"x" * 1000), chunk(b"x" * 25, more=False)])
    assert declared[0] == streamed[0] == 413
    assert_envelope(declared[2], "request_too_large")
    assert_envelope(streamed[2], "request_too_large")
    assert bodies == []


async def test_a_body_that_stalls_is_408_with_the_envelope_and_closes_the_connection() -> None:
    app, bodies = app_reading_the_body(read_timeout=0.2)
    status, headers, body = await call(app, [chunk(b'{"prompt": '), 0.05, chunk(b'"a"')])  # then nothing
    assert status == 408 and headers[b"connection"] == b"close"
    assert_envelope(body, "request_timeout")
    assert bodies == []


async def test_a_slow_but_moving_body_is_read_whole() -> None:
    app, bodies = app_reading_the_body(read_timeout=0.2)
    status, _, _ = await call(app, [chunk(b"a"), 0.1, chunk(b"b"), 0.1, chunk(b"c"), 0.1, chunk(b"d", more=False)])
    assert status == 200 and bodies == [b"abcd"]


async def test_reads_after_the_body_ended_are_not_timed() -> None:
    """A route that watches for its client to hang up (the disconnect wait) waits as long as it likes."""
    seen: list[Message] = []

    async def app(scope: Any, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())  # the client's disconnect, 0.5 s later: past the read timeout
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = BodyLimitMiddleware(app, max_bytes=1024, read_timeout=0.2)
    status, _, _ = await call(guarded, [chunk(b"x", more=False), 0.5, HANG_UP])
    assert status == 204 and [m["type"] for m in seen] == ["http.request", "http.disconnect"]


async def test_a_client_gone_mid_upload_is_one_info_line_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    app, bodies = app_reading_the_body()
    with caplog.at_level(logging.DEBUG):
        status, _, _ = await call(app, [chunk(b'{"prompt": '), HANG_UP])
    assert status == 499 and bodies == []
    records = [r for r in caplog.records if r.name.startswith(("kubediffusion", "uvicorn", "fastapi", "starlette"))]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "client 10.1.2.3 disconnected while sending POST /upload"


def test_an_echoed_unpaired_surrogate_renders_as_its_escape() -> None:
    """Found by the fuzz: the 404 for model "\\ud800" could not be encoded, and became a 500."""
    response = error_response(ModelNotFoundError("\ud800"))
    error = json.loads(response.body.decode("utf-8"))["error"]
    assert response.status_code == 404 and "'\\ud800'" in error["message"]


def test_a_validation_error_about_the_whole_body_names_no_param() -> None:
    error = validation_error_from_pydantic([{"loc": (), "msg": "Input should be a valid string", "type": "x"}])
    assert error.param is None and error.message == "Invalid request body: Input should be a valid string."


def test_errors_that_leave_a_request_half_read_close_the_connection() -> None:
    assert RequestTimeoutError("slow").headers() == {"Connection": "close"}
    assert BadFramingError("bad").headers() == {"Connection": "close"}
    assert RateLimitError("later", retry_after=2.4).headers() == {"Retry-After": "2"}
    assert RequestTooLargeError("big").headers() == {}  # the body is drained, so the client can read the 413


async def test_paths_with_their_own_limit_accept_larger_bodies_and_others_do_not() -> None:
    """The uploads (edits, variations) have a larger limit than the JSON routes."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    @app.post("/small")
    async def read(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodyLimitMiddleware, max_bytes=1024, path_limits={"/upload": 4096})
    body = chunk(b"x" * 3000, more=False)
    assert (await call(app, [body]))[0] == 200
    assert (await upload(app, [body], path="/small", client=("10.1.2.3", 1)))[0] == 413
    declared = [(b"content-length", b"5000")]
    status, _, answer = await call(app, [chunk(b"x" * 5000, more=False)], headers=declared)
    assert status == 413 and json.loads(answer)["error"]["message"].endswith("4096 bytes.")
