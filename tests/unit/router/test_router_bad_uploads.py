"""Bad multipart forms and bad images: every one a 4xx with OpenAI's envelope, and no pod ever asked."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from kubediffusion.api.limits import GenerationLimits
from kubediffusion.api.multipart import FormPart, encode_multipart
from kubediffusion.router.routing import ModelEntry
from tests.unit.router.test_router_app import A, assert_envelope
from tests.unit.router.uploads import form, image_file, jpeg, png, png_claiming

LIMITS = GenerationLimits(min_size=8, max_size=256, max_n=4, max_steps=10, max_prompt_chars=100)
EDITS, VARIATIONS = "/v1/images/edits", "/v1/images/variations"

Body = tuple[bytes, dict[str, str]]


def edit(fields: dict[str, Any] | None = None, files: list[Any] | None = None) -> Body:
    return form({"prompt": "a hat", **(fields or {})}, files if files is not None else [image_file()])


def raw(body: bytes, content_type: str) -> Body:
    return body, {"content-type": content_type}


def parts(*items: FormPart) -> Body:
    body, content_type = encode_multipart(items)
    return body, {"content-type": content_type}


def corrupt_crc(data: bytes) -> bytes:
    return data[:29] + bytes([data[29] ^ 0xFF]) + data[30:]  # a byte of IHDR's CRC


def gif() -> bytes:
    return b"GIF89a" + struct.pack("<HH", 16, 16) + b"\x00" * 20


def raw_answer_of_two() -> Body:
    body, headers = edit({"n": 2})
    return body, {**headers, "accept": "image/png"}


def truncated() -> Body:
    body, headers = edit()
    return body[:-40], headers


def many_parts() -> Body:
    return parts(
        FormPart("prompt", b"a hat"), FormPart("image", png(), "a.png", "image/png"), *[FormPart("x", b"1")] * 70
    )


# (id, path, request body, status, param or None)
CASES: list[tuple[str, str, Callable[[], Body], int, str | None]] = [
    ("json-content-type", EDITS, lambda: raw(b'{"prompt": "x"}', "application/json"), 400, None),
    ("no-boundary", EDITS, lambda: raw(edit()[0], "multipart/form-data"), 400, None),
    ("wrong-boundary", EDITS, lambda: raw(edit()[0], "multipart/form-data; boundary=nothere"), 400, None),
    ("truncated-form", EDITS, truncated, 400, None),
    ("part-without-name", EDITS, lambda: parts(FormPart("", b"x")), 400, None),
    ("missing-image", EDITS, lambda: edit(files=[]), 400, "image"),
    ("missing-prompt", EDITS, lambda: form({}, [image_file()]), 400, "prompt"),
    ("blank-prompt", EDITS, lambda: edit({"prompt": "   "}), 400, "prompt"),
    ("prompt-over-model-limit", EDITS, lambda: edit({"prompt": "x" * 101}), 400, "prompt"),
    ("not-an-image", EDITS, lambda: edit(files=[image_file(b"hello, not a picture")]), 400, "image"),
    ("gif-image", EDITS, lambda: edit(files=[image_file(gif(), filename="a.gif")]), 400, "image"),
    ("truncated-png", EDITS, lambda: edit(files=[image_file(png(32, 32)[:60])]), 400, "image"),
    ("png-bad-crc", EDITS, lambda: edit(files=[image_file(corrupt_crc(png()))]), 400, "image"),
    ("truncated-jpeg", EDITS, lambda: edit(files=[image_file(jpeg()[:-2], filename="a.jpg")]), 400, "image"),
    ("decompression-bomb", EDITS, lambda: edit(files=[image_file(png_claiming(100_000, 100_000))]), 400, "image"),
    ("over-model-input-size", EDITS, lambda: edit(files=[image_file(png_claiming(2000, 2000))]), 400, "image"),
    ("mask-without-alpha", EDITS, lambda: edit(files=[image_file(), image_file(png(), "mask")]), 400, "mask"),
    (
        "mask-of-another-size",
        EDITS,
        lambda: edit(files=[image_file(png(16, 16)), image_file(png(32, 32, alpha=True), "mask")]),
        400,
        "mask",
    ),
    (
        "two-masks",
        EDITS,
        lambda: edit(files=[image_file(), image_file(png(alpha=True), "mask"), image_file(png(alpha=True), "mask")]),
        400,
        "mask",
    ),
    ("seventeen-images", EDITS, lambda: edit(files=[image_file(png(), "image[]")] * 17), 400, "image"),
    ("unknown-field", EDITS, lambda: edit({"bogus": "1"}), 400, "bogus"),
    ("duplicate-field", EDITS, lambda: parts(FormPart("prompt", b"a"), FormPart("prompt", b"b")), 400, "prompt"),
    ("n-not-a-number", EDITS, lambda: edit({"n": "two"}), 400, "n"),
    ("n-zero", EDITS, lambda: edit({"n": 0}), 400, "n"),
    ("n-eleven", EDITS, lambda: edit({"n": 11}), 400, "n"),
    ("n-times-images-over-max-n", EDITS, lambda: edit({"n": 2}, [image_file(png(), "image[]")] * 3), 400, "n"),
    ("size-garbage", EDITS, lambda: edit({"size": "banana"}), 400, "size"),
    ("size-over-model-max", EDITS, lambda: edit({"size": "1024x1024"}), 400, "size"),
    ("response-format-gif", EDITS, lambda: edit({"response_format": "gif"}), 400, "response_format"),
    ("output-format-bmp", EDITS, lambda: edit({"output_format": "bmp"}), 400, "output_format"),
    ("output-compression-101", EDITS, lambda: edit({"output_compression": 101}), 400, "output_compression"),
    ("strength-zero", EDITS, lambda: edit({"strength": 0}), 400, "strength"),
    ("strength-nan", EDITS, lambda: edit({"strength": "nan"}), 400, "strength"),
    ("steps-over-model-max", EDITS, lambda: edit({"num_inference_steps": 11}), 400, "num_inference_steps"),
    ("negative-guidance", EDITS, lambda: edit({"guidance_scale": -1}), 400, "guidance_scale"),
    ("partial-images-four", EDITS, lambda: edit({"stream": "true", "partial_images": 4}), 400, "partial_images"),
    ("stream-not-a-bool", EDITS, lambda: edit({"stream": "maybe"}), 400, "stream"),
    ("transparent-background", EDITS, lambda: edit({"background": "transparent"}), 400, "background"),
    ("non-utf8-text", EDITS, lambda: parts(FormPart("prompt", b"\xff\xfe")), 400, "prompt"),
    ("too-many-parts", EDITS, many_parts, 400, None),
    ("unknown-model", EDITS, lambda: edit({"model": "dall-e-9"}), 404, "model"),
    ("variation-with-two-images", VARIATIONS, lambda: form({}, [image_file(), image_file()]), 400, "image"),
    ("variation-with-a-prompt", VARIATIONS, lambda: form({"prompt": "x"}, [image_file()]), 400, "prompt"),
    (
        "variation-with-a-mask",
        VARIATIONS,
        lambda: form({}, [image_file(), image_file(png(alpha=True), "mask")]),
        400,
        "mask",
    ),
    ("variation-without-image", VARIATIONS, lambda: form({"n": 1}), 400, "image"),
    ("variation-stream", VARIATIONS, lambda: form({"stream": "true"}, [image_file()]), 400, "stream"),
    ("raw-answer-of-two-images", EDITS, raw_answer_of_two, 400, "n"),
]


def test_the_table_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("path", "make", "status", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_upload_is_a_4xx_envelope_and_never_reaches_a_pod(
    router: Any, pods: Any, path: str, make: Callable[[], Body], status: int, param: str | None
) -> None:
    body, headers = make()
    async with router([ModelEntry(name="tiny", endpoints=(A,), limits=LIMITS)]) as client:
        response = await client.post(path, content=body, headers=headers)
    error = assert_envelope(response, status)
    if param is not None:
        assert error["param"] == param, error
    assert 400 <= response.status_code < 500
    assert pods.hits() == 0
