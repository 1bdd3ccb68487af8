"""Hypothesis strategies for request bodies of ``POST /v1/images/generations``: every field of
``ImageGenerationRequest`` with valid, boundary, wrong-typed, huge, null, unicode and nested values,
unknown keys, raw byte garbage, JSON that is not an object, and odd content types."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from kubediffusion.api.schema import MAX_PROMPT_CHARS, MAX_SEED, ImageGenerationRequest

JSON_TYPE = "application/json"


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each ``weight`` times as likely (shrinking goes towards the first)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(pool) - 1).flatmap(lambda index: pool[index])


@dataclass(frozen=True)
class RawNumber:
    """A JSON number written as is (json.dumps cannot write integers past Python's digit limit)."""

    text: str


def to_json(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON for ``value``, non-ASCII text escaped or as UTF-8 (an unpaired surrogate then makes bytes that
    are not UTF-8); NaN/Infinity come out as Python writes them (not JSON: a case of its own)."""
    return _text(value, ascii_only).encode("utf-8", "surrogatepass")


def _text(value: Any, ascii_only: bool) -> str:
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(key), ensure_ascii=ascii_only)}:{_text(item, ascii_only)}" for key, item in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


huge_integers = st.integers(min_value=300, max_value=6000).map(lambda digits: RawNumber("9" * digits))
huge_floats = st.sampled_from(
    [RawNumber("1e400"), RawNumber("-1e400"), RawNumber("1e-400"), RawNumber("1" + "0" * 400 + ".5")]
)
texts = st.text(max_size=40)
# Any code point, unpaired surrogates (which JSON can escape) and controls included.
unicode_texts = st.text(
    alphabet=st.characters(categories=("L", "M", "N", "P", "S", "Z", "C")), max_size=40
) | st.sampled_from(["\ud800", "a\udfff", "\udc00\ud800", "\x00", "\u202e", "é" * 10, "😀", "\ufeff"])
huge_texts = st.integers(min_value=MAX_PROMPT_CHARS - 2, max_value=MAX_PROMPT_CHARS + 2).map(
    lambda n: "x" * n
) | st.just("é" * 40_000)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | texts | unicode_texts
)
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
deep = st.integers(min_value=1, max_value=3000).map(lambda depth: RawNumber("[" * depth + "]" * depth))
junk = scalars | nested | huge_integers | huge_floats | huge_texts | deep

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "n": (1, 10),
    "output_compression": (0, 100),
    "partial_images": (0, 3),
    "num_inference_steps": (1, 60),
    "seed": (0, MAX_SEED),
}


def integers_around(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=low, max_value=high) | st.sampled_from(
        [low - 1, low, high, high + 1, -1, 0, 2**63, 2**64, -(2**63) - 1]
    )


FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": texts | unicode_texts | huge_texts | st.sampled_from(["a lighthouse", " ", "", "{prompt}"]),
    "model": st.sampled_from(["tiny", "dall-e-2", "dall-e-3", "TINY", "tiny ", ""]) | unicode_texts,
    "size": st.sampled_from(
        [
            "64x64",
            "auto",
            "128x64",
            "1024x1024",
            "0x0",
            "64x64\n",
            "99999x99999",
            "64X64",
            "8x8",
            "63x64",
            "64x64x64",
            "x64",
            "064x64",
            "6\u0664x64",
            "-64x64",
            "64 x 64",
        ]
    )
    | texts,
    "response_format": st.sampled_from(["url", "b64_json", "gif", "URL"]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "bmp", "PNG"]),
    "quality": st.sampled_from(["standard", "hd", "low", "medium", "high", "auto", "ultra"]),
    "style": st.sampled_from(["vivid", "natural", "anime", "cubist", ""]),
    "background": st.sampled_from(["transparent", "opaque", "auto", "green"]),
    "moderation": st.sampled_from(["low", "auto", "high"]),
    "user": texts | unicode_texts | huge_texts,
    "conversation_id": texts | unicode_texts | huge_texts,
    "store": st.booleans(),
    "stream": st.booleans(),
    "negative_prompt": texts | unicode_texts | huge_texts,
    "guidance_scale": st.floats(min_value=-1, max_value=51)
    | st.sampled_from([0, 0.0, -0.0, 50, 50.0, math.nextafter(50.0, 51.0), 1e308, 5e-324]),
    "adapters": st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["style-a", "nope", "", "STYLE-A"]) | texts},
            optional={"scale": st.floats(min_value=-3, max_value=3) | st.sampled_from([0, 2, -2, 2.0001, 1e308, "1"])},
        ),
        max_size=9,
    )
    | st.sampled_from([[], {"name": "style-a"}, [{"name": "style-a", "weight": 1}], [{"name": "style-a"}] * 2]),
    "scheduler": st.sampled_from(["EulerDiscreteScheduler", "DDIMScheduler", "NoSuchScheduler", ""]) | texts,
}
FIELD_VALUES.update({name: integers_around(*bounds) for name, bounds in INTEGER_RANGES.items()})
assert set(FIELD_VALUES) == set(ImageGenerationRequest.model_fields), "every field of the schema is fuzzed"

# Weighted towards bodies that mostly make sense, so that the checks past parsing are reached too: a
# prompt that is fine, a few fields with values of their own kind, now and then a null, junk or an
# unknown key.
field_value = st.sampled_from(sorted(set(FIELD_VALUES) - {"prompt"})).flatmap(
    lambda name: st.tuples(st.just(name), weighted((6, FIELD_VALUES[name]), (1, st.none()), (1, junk)))
)


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    absent = object()
    prompt = weighted((14, st.just("a lighthouse")), (4, FIELD_VALUES["prompt"]), (1, junk), (1, st.just(absent)))
    if (value := draw(prompt)) is not absent:
        body["prompt"] = value
    body.update(draw(st.lists(field_value, max_size=5)))
    if not draw(st.integers(min_value=0, max_value=5)):
        body.update(draw(st.dictionaries(texts | unicode_texts, junk, min_size=1, max_size=2)))
    return body


content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;",
            " application/json ",
            "application/jsonx",
            "text/plain",
            "text/json",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
            "*/*",
            "application/json; charset=latin-1",
            "\u00e9/\u00e9",
        ]
    )
    | st.none()
)

Body = tuple[bytes, str | None]

encoded_objects = st.builds(to_json, request_objects(), ascii_only=st.booleans())
json_objects: st.SearchStrategy[Body] = st.tuples(encoded_objects, st.just(JSON_TYPE))
odd_content_types: st.SearchStrategy[Body] = st.tuples(encoded_objects, content_types)
garbage: st.SearchStrategy[Body] = st.tuples(
    st.binary(max_size=200)
    | st.sampled_from([b"", b"{", b"[]", b"null", b'"a"', b"1", b"{}" * 2, b"\xef\xbb\xbf{}", b'{"prompt": "a"}\x00'])
    | st.builds(to_json, junk, ascii_only=st.booleans()),
    st.just(JSON_TYPE) | content_types,
)
other_encodings: st.SearchStrategy[Body] = st.tuples(
    st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1"]).map(
        lambda encoding: json.dumps({"prompt": "é a lighthouse"}, ensure_ascii=False).encode(encoding)
    ),
    st.just(JSON_TYPE),
)
bodies: st.SearchStrategy[Body] = weighted(
    (12, json_objects), (2, odd_content_types), (2, garbage), (1, other_encodings)
)
