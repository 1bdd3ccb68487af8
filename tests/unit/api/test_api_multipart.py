"""The bounded multipart/form-data parser: what browsers, curl and the openai client send parses; every
malformed or oversized form is a 4xx envelope, decided while scanning, before any part is decoded."""

from __future__ import annotations

import json

import httpx
import pytest

from kubediffusion.api.errors import APIError, error_response
from kubediffusion.api.multipart import (
    FormPart,
    MultipartLimits,
    encode_multipart,
    header_params,
    parse_multipart,
    replace_fields,
)

CT = "multipart/form-data; boundary=XyZ"


def raw(*parts: bytes, boundary: bytes = b"XyZ", end: bytes = b"--XyZ--\r\n") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + end


def field(name: str, value: bytes, extra: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name.encode() + b'"' + extra + b"\r\n\r\n" + value


def test_what_httpx_and_the_openai_client_send_parses() -> None:
    request = httpx.Request(
        "POST",
        "http://x/v1/images/edits",
        data={"prompt": "a cat", "n": "2"},
        files=[("image[]", ("a.png", b"\x89PNG-a", "image/png")), ("image[]", ("b.png", b"b\r\n--not", "image/png"))],
    )
    parts = parse_multipart(request.read(), request.headers["content-type"])
    assert [(p.name, p.data, p.filename, p.content_type) for p in parts] == [
        ("prompt", b"a cat", None, None),
        ("n", b"2", None, None),
        ("image[]", b"\x89PNG-a", "a.png", "image/png"),
        ("image[]", b"b\r\n--not", "b.png", "image/png"),
    ]


def test_preamble_epilogue_padding_quoting_and_empty_parts() -> None:
    body = b"this preamble is ignored\r\n" + raw(
        field("a", b""),
        b'content-disposition: FORM-DATA; name=b; filename="q\\"x.png"\r\ncontent-type: image/png\r\n\r\nB',
        end=b"--XyZ--\r\nand an epilogue",
    ).replace(b"--XyZ\r\n", b"--XyZ  \r\n", 1)
    parts = parse_multipart(body, 'multipart/form-data; boundary="XyZ"; charset=utf-8')
    assert [(p.name, p.data, p.filename) for p in parts] == [("a", b"", None), ("b", b"B", 'q"x.png')]


def test_a_boundary_string_inside_a_longer_line_is_data() -> None:
    (part,) = parse_multipart(raw(field("a", b"x\r\n--XyZW y")), CT)
    assert part.data == b"x\r\n--XyZW y"


def test_encode_then_parse_round_trips_and_replace_fields_keeps_images_unchanged() -> None:
    parts = [FormPart("image", bytes(range(256)) * 3, 'a"b\r\n.png', "image/png"), FormPart("model", b"alias")]
    body, content_type = encode_multipart(replace_fields(parts, {"model": "tiny", "response_format": "b64_json"}))
    parsed = parse_multipart(body, content_type)
    assert [(p.name, p.data) for p in parsed] == [
        ("image", bytes(range(256)) * 3),
        ("model", b"tiny"),
        ("response_format", b"b64_json"),
    ]
    assert parsed[0].filename == "a%22b%0D%0A.png"
    assert [p.name for p in replace_fields(parts, {"model": None})] == ["image"]


def test_header_params_reject_what_is_not_parameters() -> None:
    assert header_params('form-data; name="a;b"; x=1;', what="h") == ("form-data", {"name": "a;b", "x": "1"})
    for bad in ('form-data; name="a', "form-data; name", 'form-data; name="a"; name="b"', "form-data; =a"):
        with pytest.raises(APIError):
            header_params(bad, what="h")


BASE64 = b"\r\nContent-Transfer-Encoding: base64"
LIMITS = MultipartLimits(max_bytes=4096, max_parts=3, max_part_bytes=100, max_header_bytes=200)
BAD_FORMS: list[tuple[str, bytes, str | None, int, str | None]] = [
    # (case, body, content type, status, code)
    ("json content type", b"{}", "application/json", 400, "unsupported_media_type"),
    ("no content type", raw(field("a", b"1")), None, 400, "unsupported_media_type"),
    ("urlencoded form", b"a=1", "application/x-www-form-urlencoded", 400, "unsupported_media_type"),
    ("no boundary", raw(field("a", b"1")), "multipart/form-data", 400, "invalid_multipart"),
    ("empty boundary", raw(field("a", b"1")), "multipart/form-data; boundary=", 400, "invalid_multipart"),
    ("boundary of 71 characters", raw(field("a", b"1")), "multipart/form-data; boundary=" + "b" * 71, 400, None),
    ("boundary with a bad character", raw(field("a", b"1")), "multipart/form-data; boundary=a{b", 400, None),
    (
        "boundary not in the body",
        raw(field("a", b"1"), boundary=b"Other", end=b"--Other--"),
        CT,
        400,
        "invalid_multipart",
    ),
    ("no closing delimiter", raw(field("a", b"1"), end=b""), CT, 400, "invalid_multipart"),
    ("truncated in a part", raw(field("a", b"1"))[:-12], CT, 400, "invalid_multipart"),
    ("truncated in the headers", b'--XyZ\r\nContent-Disposition: form-data; name="a"', CT, 400, "invalid_multipart"),
    ("too many parts", raw(*(field(f"f{i}", b"1") for i in range(4))), CT, 400, "too_many_parts"),
    ("oversized part", raw(field("image", b"x" * 101)), CT, 400, "file_too_large"),
    ("headers too long", raw(field("a", b"1", b"; x=" + b"y" * 300)), CT, 400, "invalid_multipart"),
    ("body over the form's limit", raw(field("a", b"x" * 5000)), CT, 413, "request_too_large"),
    ("part without Content-Disposition", raw(b"Content-Type: text/plain\r\n\r\nx"), CT, 400, None),
    ("part without headers", raw(b"\r\nx"), CT, 400, "invalid_multipart"),
    ("disposition not form-data", raw(b'Content-Disposition: attachment; name="a"\r\n\r\nx'), CT, 400, None),
    ("part without a name", raw(b'Content-Disposition: form-data; filename="a"\r\n\r\nx'), CT, 400, None),
    ("two dispositions", raw(field("a", b"1").replace(b"\r\n\r\n", b"\r\n" + field("b", b"2"), 1)), CT, 400, None),
    ("folded header", raw(b"Content-Disposition: form-data;\r\n name=a\r\n\r\nx"), CT, 400, "invalid_multipart"),
    ("header that is not a header", raw(b"Content-Disposition form-data\r\n\r\nx"), CT, 400, "invalid_multipart"),
    ("part headers not UTF-8", raw(b'Content-Disposition: form-data; name="\xff"\r\n\r\nx'), CT, 400, None),
    ("base64 transfer encoding", raw(field("a", b"eA==", BASE64)), CT, 400, "invalid_multipart"),
    ("garbage after a delimiter", raw(field("a", b"1")).replace(b"--XyZ\r\n", b"--XyZ junk\r\n", 1), CT, 400, None),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"), [case[1:] for case in BAD_FORMS], ids=[case[0] for case in BAD_FORMS]
)
def test_bad_form_is_a_4xx_envelope(body: bytes, content_type: str | None, status: int, code: str | None) -> None:
    with pytest.raises(APIError) as caught:
        parse_multipart(body, content_type, LIMITS)
    response = error_response(caught.value)
    payload = json.loads(bytes(response.body))
    assert response.status_code == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert payload["error"]["code"] == code


def test_an_oversized_part_names_its_field() -> None:
    with pytest.raises(APIError) as caught:
        parse_multipart(raw(field("mask", b"x" * 101)), CT, LIMITS)
    assert caught.value.param == "mask"


@pytest.mark.parametrize("boundary", ["a b", "=?'()+_,-./:", "plain-token"])
def test_boundaries_that_need_quotes_are_quoted(boundary: str) -> None:
    body, content_type = encode_multipart([FormPart("a", b"1")], boundary)
    assert [part.data for part in parse_multipart(body, content_type)] == [b"1"]
