"""Raw image answers: ``Accept: image/png`` (or ``image/jpeg``, ``image/webp``, ``image/*``) gets the
image's bytes instead of JSON.

The rules, decided once here for every image endpoint:

* JSON unless the Accept header prefers an image type to ``application/json``: a missing header,
  ``*/*``, ``application/json``, and ties (``image/png, application/json``) all get JSON, the API's own
  answer, so no existing client changes behaviour.
* Which image type: the most preferred one Accept lists. ``image/*`` takes the request's
  ``output_format`` (png when it names none).
* The request's ``output_format`` and Accept must agree: a request asking for ``webp`` with
  ``Accept: image/png`` is a 400 (param ``output_format``), never a silent switch. When the request
  names no ``output_format``, Accept decides it (the router sets it in what the pod gets).
* One image per answer: a request for more (``n`` > 1, or an edit of several images) is a 400 (param
  ``n``). 400 rather than 406: the request contradicts itself (several images, one body), which is
  the client's to fix; 406 would say the router cannot
  produce any of the accepted types, which is not true of ``n: 1``. The official clients also map
  400 to a typed error carrying OpenAI's envelope.
* Not with ``stream: true`` (an event stream is not an image): 400, param ``stream``.
"""

from __future__ import annotations

from typing import Literal

from kubediffusion.api.errors import InvalidRequestError

OutputFormat = Literal["png", "jpeg", "webp"]
IMAGE_TYPES: dict[str, OutputFormat] = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
CONTENT_TYPES: dict[OutputFormat, str] = {fmt: media for media, fmt in IMAGE_TYPES.items()}
JSON = "application/json"


def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """``Accept`` -> [(media range, q)] in the order listed; malformed q values count as 1."""
    ranges = []
    for item in (header or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 1.0
        ranges.append((media.lower(), q))
    return ranges


def _quality(media: str, ranges: list[tuple[str, float]]) -> float:
    """q of ``media`` under the most specific range that matches it (RFC 9110 §12.5.1); 0 if none."""
    kind = media.split("/")[0] + "/*"
    for candidate in (media, kind, "*/*"):
        found = [q for r, q in ranges if r == candidate]
        if found:
            return max(found)
    return 0.0


def wanted_image(accept: str | None) -> OutputFormat | Literal["any"] | None:
    """The image type the client prefers to JSON (``"any"`` for ``image/*``), or None for JSON."""
    ranges = parse_accept(accept)
    if not ranges:
        return None
    json_q = _quality(JSON, ranges)
    best: tuple[float, OutputFormat | Literal["any"]] | None = None
    for media, q in ranges:
        if q <= json_q or q <= 0:
            continue
        if media == "image/*":
            choice: OutputFormat | Literal["any"] = "any"
        elif media in IMAGE_TYPES:
            choice = IMAGE_TYPES[media]
        else:
            continue
        if best is None or q > best[0]:
            best = (q, choice)
    return best[1] if best is not None else None


def raw_format(
    accept: str | None, *, n: int | None, output_format: str | None, stream: bool | None
) -> OutputFormat | None:
    """The format of a raw image answer for this request, or None for JSON; InvalidRequestError when
    the request contradicts its Accept header (see the module docstring)."""
    wanted = wanted_image(accept)
    if wanted is None:
        return None
    if stream:
        raise InvalidRequestError(
            "A streamed answer is an event stream: it cannot be sent as a raw image (Accept).",
            param="stream",
            code="unsupported_value",
        )
    if n is not None and n > 1:
        shown = "image/*" if wanted == "any" else CONTENT_TYPES[wanted]
        raise InvalidRequestError(
            f"A raw image answer (Accept: {shown}) holds one image and this request makes {n}: ask for one "
            "image (n: 1), or for JSON.",
            param="n",
            code="invalid_value",
        )
    if wanted == "any":
        return output_format if output_format in CONTENT_TYPES else "png"
    if output_format is not None and output_format != wanted:
        raise InvalidRequestError(
            f"output_format '{output_format}' disagrees with the Accept header ({CONTENT_TYPES[wanted]}).",
            param="output_format",
            code="invalid_value",
        )
    return wanted
