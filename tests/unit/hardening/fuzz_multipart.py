"""Hypothesis strategies for uploads to ``POST /v1/images/edits`` and ``/v1/images/variations``: forms with
every field of both requests (typed, boundary, junk, empty, huge values), unknown and repeated fields,
valid and broken images and masks (truncated, corrupt, bombs, other sizes, no alpha), then the form's
own framing bent: odd boundaries and content types, cut or spliced bodies, mangled part headers."""

from __future__ import annotations

from hypothesis import strategies as st

from kubediffusion.api.edits import ImageEditFields, ImageVariationFields
from kubediffusion.api.multipart import FormPart, encode_multipart
from tests.unit.api.sample_images import image_file, mask_png, png, png_claiming
from tests.unit.hardening.fuzz_strategies import texts, unicode_texts, weighted

EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"

Upload = tuple[str, bytes, str | None]  # path, body, content type

VALID_IMAGES = [
    png((64, 64)),
    png((96, 64), mode="RGBA", hole=(0, 0, 8, 8)),
    image_file((64, 80), "JPEG"),
    image_file((64, 64), "WEBP"),
    image_file((72, 64), "WEBP", mode="RGBA", hole=(0, 0, 4, 4), lossless=True),
]
BROKEN_IMAGES = [
    b"",
    b"not an image",
    png()[:-13],
    png()[:30],
    png()[:40] + b"\x00" + png()[41:],
    image_file((64, 64), "JPEG")[:-40],
    b"\xff\xd8\xff" + b"\x00" * 40,
    image_file((64, 64), "WEBP")[:-10],
    png_claiming(100_000, 100_000),
    png_claiming(4000, 4000),
    png_claiming(64, 64),  # structurally fine, its pixel data does not inflate to 64x64
    image_file((8, 8), "GIF"),
]
MASKS = [mask_png((64, 64)), mask_png((96, 64)), mask_png((8, 8)), png((64, 64)), image_file((64, 64), "JPEG")]
images = weighted((6, st.sampled_from(VALID_IMAGES)), (2, st.sampled_from(BROKEN_IMAGES)), (1, st.binary(max_size=64)))

number_texts = st.sampled_from(["0", "1", "2", "3", "4", "5", "11", "-1", "1.5", "0.5", "1e3", "nan", "inf", " 2 "])
FIELD_TEXTS: dict[str, st.SearchStrategy[str]] = {
    "prompt": st.sampled_from(["a barn", " ", "", "x" * 3000]) | texts | unicode_texts,
    "model": st.sampled_from(["tiny", "dall-e-2", "nope", ""]),
    "size": st.sampled_from(["64x64", "auto", "96x64", "2048x2048", "0x0", "big", "64x64\n", ""]),
    "response_format": st.sampled_from(["url", "b64_json", "gif"]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "bmp"]),
    "quality": st.sampled_from(["standard", "low", "high", "auto", "ultra"]),
    "background": st.sampled_from(["transparent", "opaque", "auto", "green"]),
    "input_fidelity": st.sampled_from(["high", "low", "max"]),
    "stream": st.sampled_from(["true", "false", "TRUE", "1", "yes", ""]),
    "store": st.sampled_from(["true", "false", "maybe"]),
    "strength": number_texts | st.sampled_from(["0.01", "0.009", "1", "1.0001"]),
    "guidance_scale": number_texts | st.sampled_from(["50", "50.1", "-0"]),
    **{name: number_texts for name in ("n", "output_compression", "partial_images", "seed", "num_inference_steps")},
    **{name: texts | unicode_texts for name in ("user", "conversation_id", "negative_prompt")},
    "adapters": st.sampled_from(
        ['[{"name": "style-a"}]', '[{"name": "style-a", "scale": 3}]', '[{"name": "x", "scale": NaN}]', "[", "{}", ""]
    )
    | texts,
    "scheduler": st.sampled_from(["EulerDiscreteScheduler", "DDIMScheduler", "NoSuchScheduler", ""]),
}
assert set(FIELD_TEXTS) == set(ImageEditFields.model_fields) | set(ImageVariationFields.model_fields)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # an unpaired surrogate makes bytes that are not UTF-8


field_parts = st.sampled_from(sorted(FIELD_TEXTS)).flatmap(
    lambda name: st.builds(lambda value: FormPart(name, _utf8(value)), FIELD_TEXTS[name])
)
names = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)  # headers are UTF-8 text
unknown_parts = st.builds(lambda name, value: FormPart(name, _utf8(value)), names, texts)
image_parts = st.builds(FormPart, st.sampled_from(["image", "image", "image[]", "mask"]), images, st.just("i.png"))
mask_parts = st.builds(FormPart, st.just("mask"), st.sampled_from(MASKS), st.just("m.png"), st.just("image/png"))


@st.composite
def forms(draw: st.DrawFn) -> Upload:
    path = draw(st.sampled_from([EDITS, EDITS, VARIATIONS]))
    parts: list[FormPart] = []
    if path == EDITS and draw(st.integers(0, 9)):
        parts.append(FormPart("prompt", b"a barn"))
    if draw(st.integers(0, 9)):
        parts.append(FormPart("image", draw(images), "in.png", "image/png"))
    parts += draw(
        st.lists(weighted((6, field_parts), (2, image_parts), (1, mask_parts), (1, unknown_parts)), max_size=5)
    )
    order = draw(st.permutations(range(len(parts))))
    body, content_type = encode_multipart([parts[index] for index in order], draw(boundaries))
    return path, *draw(bent(body, content_type))


boundaries = st.sampled_from(["XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a b", "=?'()+_,-./:"]) | st.none()


@st.composite
def bent(draw: st.DrawFn, body: bytes, content_type: str) -> tuple[bytes, str | None]:
    """Most forms as encoded; some with their framing bent."""
    how = draw(weighted((10, st.just("as is")), (1, st.sampled_from(["cut", "splice", "type", "headers", "count"]))))
    if how == "as is":
        return body, content_type
    if how == "cut":
        return body[: draw(st.integers(0, len(body)))], content_type
    if how == "splice":
        at = draw(st.integers(0, len(body)))
        return body[:at] + draw(st.binary(max_size=40) | st.just(b"\r\n--XyZ\r\n")) + body[at:], content_type
    if how == "type":
        return body, draw(
            st.sampled_from(
                [
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=other",
                    "multipart/form-data; boundary=" + "b" * 71,
                    "multipart/mixed; " + content_type.split("; ", 1)[1],
                    "application/json",
                    "",
                ]
            )
            | st.none()
        )
    if how == "headers":
        old = draw(st.sampled_from([b"Content-Disposition: form-data; ", b'name="', b"\r\n\r\n", b"Content-Type: "]))
        new = draw(
            st.sampled_from([b"", b"X: y\r\n", b"\r\n ", b'"', b"\xff", b"Content-Transfer-Encoding: base64\r\n"])
        )
        return body.replace(old, new, 1), content_type
    extra = b"".join(
        b'\r\nContent-Disposition: form-data; name="f' + str(i).encode() + b'"\r\n\r\n1\r\n--XyZ' for i in range(70)
    )
    return body.replace(b"--XyZ", b"--XyZ" + extra, 1), content_type


uploads: st.SearchStrategy[Upload] = forms()
