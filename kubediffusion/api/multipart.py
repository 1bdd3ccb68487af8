"""A bounded ``multipart/form-data`` parser and encoder, for the edits and variations uploads (router and pods).

Ours, not python-multipart (what Starlette's ``request.form()`` uses): the body is already in memory,
bounded by :class:`~kubediffusion.api.bodylimit.BodyLimitMiddleware`, so one scan over its bytes with
``bytes.find`` is all the parsing there is, and every limit is checked during that scan, before any
part is decoded (as text or as an image): the body's size, the number of parts, each part's size and
the size of each part's headers. Nothing is spooled to disk, no new dependency enters the router's
image, and the errors are our envelope, each naming what is wrong.

What is accepted (RFC 7578 / RFC 2046, as browsers, curl and the ``openai`` client send it): a
``boundary`` of 1-70 allowed characters, an optional preamble and epilogue, transport padding after a
delimiter, ``Content-Disposition: form-data`` with a ``name`` (and optional ``filename``) per part,
an optional ``Content-Type`` per part. Refused with a 400: no or a bad boundary, a body with no
closing delimiter (truncated), a part without a name, folded or non-UTF-8 part headers, and a
``Content-Transfer-Encoding`` other than the identity ones (RFC 7578 deprecates it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubediffusion.api.errors import InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError

MULTIPART_FORM_DATA = "multipart/form-data"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\\r\n]|\\[^\r\n])*"|[^;"\s]*)\s*')
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
_PADDING = b" \t"


@dataclass(frozen=True)
class MultipartLimits:
    """Bounds on one form. The defaults fit OpenAI's own (16 images of up to 50 MB each, one mask) for
    the largest bodies a server accepts; the body's size is also the server's own body limit."""

    max_bytes: int = 64 * 1024 * 1024
    max_parts: int = 64
    max_part_bytes: int = 50 * 1024 * 1024
    max_header_bytes: int = 8 * 1024


@dataclass(frozen=True)
class FormPart:
    """One part of a form: its field name, its bytes as sent, and the filename/Content-Type if any."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def _malformed(detail: str) -> InvalidRequestError:
    return InvalidRequestError(f"Could not parse the multipart form: {detail}.", code="invalid_multipart")


def header_params(value: str, *, what: str) -> tuple[str, dict[str, str]]:
    """``'form-data; name="a"; filename="b"'`` -> ``("form-data", {"name": "a", "filename": "b"})``.

    Parameter names are lower-cased; quoted values are unquoted (backslash escapes); a repeated
    parameter or anything that is not ``; name=value`` is an error naming ``what``."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    position = 0
    rest = rest.rstrip(" \t;")  # a trailing ";" is sent by some clients
    rest = ";" + rest if rest else ""
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            raise _malformed(f"invalid parameters in the {what}")
        key, raw = match.group(1).lower(), match.group(2)
        if key in params:
            raise _malformed(f"parameter {key!r} repeated in the {what}")
        params[key] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
    return head.strip().lower(), params


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or a 400 saying what is wrong with it."""
    media_type, params = header_params(content_type or "", what="Content-Type header")
    if media_type != MULTIPART_FORM_DATA:
        raise UnsupportedMediaTypeError(
            f"Invalid Content-Type header ({content_type or 'missing'}), expected {MULTIPART_FORM_DATA}."
        )
    boundary = params.get("boundary")
    if boundary is None:
        raise _malformed("the Content-Type header has no boundary")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise _malformed("the boundary must be 1 to 70 characters from RFC 2046's set, not ending in a space")
    return boundary.encode("ascii")


def _is_delimiter_end(body: bytes, end: int) -> bool:
    """A boundary string only delimits when what follows it is ``--``, padding or CRLF (else it is a
    longer string that starts with the boundary)."""
    tail = body[end : end + 2]
    return tail in (b"--", b"\r\n") or tail[:1] in (b" ", b"\t")


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> int:
    """Index of the next ``CRLF--boundary`` at or after ``start``, or -1."""
    needle = b"\r\n" + delimiter
    position = body.find(needle, start)
    while position >= 0 and not _is_delimiter_end(body, position + len(needle)):
        position = body.find(needle, position + 1)
    return position


def _part_headers(raw: bytes) -> tuple[str, str | None, str | None]:
    """(name, filename, content type) from one part's header block."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("part headers are not UTF-8") from None
    disposition: str | None = None
    content_type: str | None = None
    for line in text.split("\r\n") if text else []:
        if line[:1] in (" ", "\t"):
            raise _malformed("folded part headers are not allowed")
        name, colon, value = line.partition(":")
        if not colon or not re.fullmatch(_TOKEN, name):
            raise _malformed("a part header is not 'Name: value'")
        key = name.lower()
        if key == "content-disposition":
            if disposition is not None:
                raise _malformed("a part has two Content-Disposition headers")
            disposition = value.strip()
        elif key == "content-type":
            content_type = value.strip() or None
        elif key == "content-transfer-encoding" and value.strip().lower() not in _IDENTITY_ENCODINGS:
            raise _malformed(f"Content-Transfer-Encoding {value.strip()!r} is not supported")
    if disposition is None:
        raise _malformed("a part has no Content-Disposition header")
    kind, params = header_params(disposition, what="Content-Disposition header")
    if kind != "form-data" or not params.get("name"):
        raise _malformed("each part needs 'Content-Disposition: form-data' with a name")
    return params["name"], params.get("filename"), content_type


def parse_multipart(body: bytes, content_type: str | None, limits: MultipartLimits | None = None) -> list[FormPart]:
    """The parts of a ``multipart/form-data`` body, in order; a 400 (413 for the whole body's size)
    naming what is wrong. Limits are checked while scanning, before any part is decoded."""
    limits = limits or MultipartLimits()
    delimiter = b"--" + boundary_of(content_type)
    if len(body) > limits.max_bytes:
        raise RequestTooLargeError(f"Request body too large: the limit is {limits.max_bytes} bytes.")
    if body.startswith(delimiter) and _is_delimiter_end(body, len(delimiter)):
        position = len(delimiter)
    else:  # a preamble before the first delimiter
        first = _next_delimiter(body, delimiter, 0)
        if first < 0:
            raise _malformed("the body does not contain the boundary")
        position = first + 2 + len(delimiter)
    parts: list[FormPart] = []
    while True:
        if body.startswith(b"--", position):
            return parts  # the closing delimiter; an epilogue after it is ignored
        while body[position : position + 1] in (b" ", b"\t"):
            position += 1
        if not body.startswith(b"\r\n", position):
            raise _malformed("the body ends before its closing boundary (truncated?)")
        position += 2
        if len(parts) >= limits.max_parts:
            raise InvalidRequestError(
                f"Too many parts in the multipart form: at most {limits.max_parts}.", code="too_many_parts"
            )
        if body.startswith(b"\r\n", position):  # a part with no headers at all
            header_end = position
        else:
            header_end = body.find(b"\r\n\r\n", position, position + limits.max_header_bytes + 4)
            if header_end < 0:
                raise _malformed(f"part headers missing, or longer than {limits.max_header_bytes} bytes")
        headers = body[position:header_end]
        data_start = header_end + (4 if header_end > position else 2)
        data_end = _next_delimiter(body, delimiter, data_start)
        if data_end < 0:
            raise _malformed("the body ends before its closing boundary (truncated?)")
        name, filename, part_type = _part_headers(headers)
        if data_end - data_start > limits.max_part_bytes:
            raise InvalidRequestError(
                f"Invalid '{name}': the part is {data_end - data_start} bytes; at most {limits.max_part_bytes}.",
                param=name,
                code="file_too_large",
            )
        parts.append(FormPart(name, body[data_start:data_end], filename, part_type))
        position = data_end + 2 + len(delimiter)


def _quote(value: str) -> str:
    """A header parameter value as HTML's form encoder writes it: ``"``, CR and LF percent-escaped."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def encode_multipart(parts: Iterable[FormPart], boundary: str | None = None) -> tuple[bytes, str]:
    """``(body, content_type)`` for ``parts``: the router's way to forward a form it changed (a model
    alias renamed, ``url`` turned into ``b64_json``); the images' bytes are copied unchanged."""
    boundary = boundary or f"kubediffusion-{secrets.token_hex(16)}"
    chunks: list[bytes] = []
    for part in parts:
        disposition = f'form-data; name="{_quote(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quote(part.filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if part.content_type:
            head += f"Content-Type: {part.content_type}\r\n"
        chunks += [head.encode("utf-8"), b"\r\n", part.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    quoted = boundary if re.fullmatch(_TOKEN, boundary) else f'"{boundary}"'  # RFC 2046 boundaries may need quotes
    return b"".join(chunks), f"{MULTIPART_FORM_DATA}; boundary={quoted}"


def replace_fields(parts: Sequence[FormPart], values: Mapping[str, str | None]) -> list[FormPart]:
    """``parts`` with every field named in ``values`` replaced by one text part with that value
    (appended at the end), or removed where the value is None; other parts keep their order."""
    kept = [part for part in parts if part.name not in values]
    kept += [FormPart(name, value.encode("utf-8")) for name, value in values.items() if value is not None]
    return kept
