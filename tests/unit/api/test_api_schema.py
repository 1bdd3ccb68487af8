"""The shared request contract: every bad input is a 400 OpenAI envelope naming the right ``param``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubediffusion.api.errors import APIError, error_response
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset
from kubediffusion.api.schema import (
    ImageGenerationRequest,
    parse_generation_request,
    resolve_params,
    response_echo,
)

JSON = "application/json"
LIMITS = GenerationLimits(min_size=64, max_size=1024, max_n=4, max_steps=50, max_prompt_chars=100)
DEFAULTS = GenerationDefaults(steps=4, guidance=0.0, size="512x512", negative_prompt="blurry")


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def resolve(raw: bytes, content_type: str | None = JSON, presets: dict[str, StylePreset] | None = None) -> Any:
    return resolve_params(parse_generation_request(raw, content_type), DEFAULTS, LIMITS, presets)


def envelope_of(raw: bytes, content_type: str | None = JSON) -> tuple[int, dict[str, Any]]:
    with pytest.raises(APIError) as caught:
        resolve(raw, content_type)
    response = error_response(caught.value)
    return response.status_code, json.loads(bytes(response.body))


BAD_INPUTS: list[tuple[str, bytes, str | None, str | None]] = [
    # (case, body, content type, expected param)
    ("missing prompt", body(n=1), JSON, "prompt"),
    ("blank prompt", body(prompt="   "), JSON, "prompt"),
    ("prompt not a string", body(prompt=5), JSON, "prompt"),
    ("prompt null", body(prompt=None), JSON, "prompt"),
    ("prompt over the model's limit", body(prompt="x" * 101), JSON, "prompt"),
    ("prompt over OpenAI's ceiling", body(prompt="x" * 32001), JSON, "prompt"),
    ("negative prompt over the model's limit", body(prompt="a", negative_prompt="x" * 101), JSON, "negative_prompt"),
    ("transparent background", body(prompt="a", background="transparent"), JSON, "background"),
    ("n zero", body(prompt="a", n=0), JSON, "n"),
    ("n eleven", body(prompt="a", n=11), JSON, "n"),
    ("n above the model's max", body(prompt="a", n=5), JSON, "n"),
    ("n as a string", body(prompt="a", n="2"), JSON, "n"),
    ("n as a float", body(prompt="a", n=2.5), JSON, "n"),
    ("n as a bool", body(prompt="a", n=True), JSON, "n"),
    ("size not WxH", body(prompt="a", size="abc"), JSON, "size"),
    ("size with trailing junk", body(prompt="a", size="512x512x"), JSON, "size"),
    ("size with a trailing newline", body(prompt="a", size="512x512\n"), JSON, "size"),
    ("size not a multiple of 8", body(prompt="a", size="500x512"), JSON, "size"),
    ("size above the limit", body(prompt="a", size="2048x2048"), JSON, "size"),
    ("size below the limit", body(prompt="a", size="32x32"), JSON, "size"),
    ("size as a number", body(prompt="a", size=512), JSON, "size"),
    ("bad response_format", body(prompt="a", response_format="gif"), JSON, "response_format"),
    ("bad output_format", body(prompt="a", output_format="gif"), JSON, "output_format"),
    ("output_compression 101", body(prompt="a", output_compression=101), JSON, "output_compression"),
    ("output_compression negative", body(prompt="a", output_compression=-1), JSON, "output_compression"),
    ("unknown field", body(prompt="a", foo=1), JSON, "foo"),
    ("guidance_scale as a string", body(prompt="a", guidance_scale="high"), JSON, "guidance_scale"),
    ("guidance_scale too large", body(prompt="a", guidance_scale=51), JSON, "guidance_scale"),
    ("steps zero", body(prompt="a", num_inference_steps=0), JSON, "num_inference_steps"),
    ("steps above the model's max", body(prompt="a", num_inference_steps=51), JSON, "num_inference_steps"),
    ("negative seed", body(prompt="a", seed=-1), JSON, "seed"),
    ("seed as a string", body(prompt="a", seed="7"), JSON, "seed"),
    ("model not a string", body(prompt="a", model=3), JSON, "model"),
    ("unknown style", body(prompt="a", style="cubist"), JSON, "style"),
    # stream: true is valid since the Images API streams (issue 13); its neighbours still have types.
    ("stream not a boolean", body(prompt="a", stream="yes"), JSON, "stream"),
    ("partial_images above 3", body(prompt="a", stream=True, partial_images=4), JSON, "partial_images"),
    ("partial_images negative", body(prompt="a", stream=True, partial_images=-1), JSON, "partial_images"),
    ("store not a boolean", body(prompt="a", store="true"), JSON, "store"),
    ("conversation_id not a string", body(prompt="a", conversation_id=5), JSON, "conversation_id"),
    ("conversation_id too long", body(prompt="a", conversation_id="c" * 513), JSON, "conversation_id"),
    ("bad quality", body(prompt="a", quality="ultra"), JSON, "quality"),
    ("invalid JSON", b'{"prompt": "a",', JSON, None),
    ("not UTF-8", b"\xff\xfe{}", JSON, None),
    ("empty body", b"", JSON, None),
    ("JSON array body", b'[{"prompt": "a"}]', JSON, None),
    ("JSON string body", b'"a cat"', JSON, None),
    ("JSON nested too deep", b"[" * 100_000, JSON, None),
    ("integer of 5000 digits", b'{"prompt": "a", "n": ' + b"9" * 5000 + b"}", JSON, None),
    ("integer of 5000 digits as seed", b'{"prompt": "a", "seed": -' + b"1" * 5000 + b"}", JSON, None),
    ("NaN guidance", b'{"prompt": "a", "guidance_scale": NaN}', JSON, None),
    ("Infinity steps", b'{"prompt": "a", "num_inference_steps": Infinity}', JSON, None),
    ("float of 1e999", b'{"prompt": "a", "guidance_scale": 1e999}', JSON, "guidance_scale"),
    ("wrong content type", body(prompt="a"), "text/plain", None),
    ("form content type", b"prompt=a", "application/x-www-form-urlencoded", None),
    ("no content type", body(prompt="a"), None, None),
    # Found by the fuzz (tests/unit/hardening): JSON may escape half a surrogate pair. In `model` it was
    # echoed in the 404 and broke its UTF-8 rendering (a 500); in `negative_prompt` it reached the CLIP
    # tokenizer, whose TypeError failed the whole batch.
    ("unpaired surrogate in model", b'{"prompt": "a", "model": "\\ud800"}', JSON, "model"),
    (
        "unpaired surrogate in negative_prompt",
        b'{"prompt": "a", "negative_prompt": "x\\udfff"}',
        JSON,
        "negative_prompt",
    ),
    ("unpaired surrogate in user", b'{"prompt": "a", "user": "\\udc00\\ud800"}', JSON, "user"),
    ("unpaired surrogate in prompt", b'{"prompt": "\\ud800"}', JSON, "prompt"),
    ("unpaired surrogate as raw bytes", b'{"prompt": "a", "style": "\xed\xa0\x80"}', JSON, "style"),
    ("key that is not Unicode text", b'{"prompt": "a", "\\ud800": 1}', JSON, None),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "param"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_is_400_envelope_naming_the_param(raw: bytes, content_type: str | None, param: str | None) -> None:
    status, payload = envelope_of(raw, content_type)
    assert status == 400
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_a_surrogate_pair_is_text_and_accepted() -> None:
    request = parse_generation_request(b'{"prompt": "a \\ud83d\\ude00", "negative_prompt": "\\ud83d\\ude00"}', JSON)
    assert request.prompt == "a \U0001f600" and request.negative_prompt == "\U0001f600"


def test_nulls_mean_defaults() -> None:
    nulls = {name: None for name in ImageGenerationRequest.model_fields if name != "prompt"}
    params = resolve(body(prompt="a cat", **nulls))
    assert (params.n, params.width, params.height, params.steps, params.guidance) == (1, 512, 512, 4, 0.0)
    assert params.negative_prompt == "blurry"
    assert params.seed is None
    assert (params.output_format, params.output_compression) == ("png", 100)


def test_clients_of_the_replaced_services_are_accepted_and_stream_is_resolved() -> None:
    """``store``, ``conversation_id`` and ``user`` (sent by the older services' clients) are no longer unknown
    parameters; ``stream`` carries ``partial_images``, which means nothing without it."""
    fields = {"store": True, "conversation_id": "conv-1", "user": "u-1"}
    plain = resolve(body(prompt="a", partial_images=2, **fields))
    assert (plain.stream, plain.partial_images) == (False, 0)
    streamed = resolve(body(prompt="a", stream=True, partial_images=2, **fields))
    assert (streamed.stream, streamed.partial_images) == (True, 2)
    assert resolve(body(prompt="a", stream=True)).partial_images == 0
    assert streamed.batch_key == plain.batch_key  # streamed and plain requests share batches


def test_request_values_override_defaults() -> None:
    params = resolve(
        body(
            prompt="a",
            n=3,
            size="256x128",
            num_inference_steps=10,
            guidance_scale=7.5,
            negative_prompt="",
            seed=42,
            output_format="webp",
            output_compression=80,
        )
    )
    assert (params.n, params.width, params.height, params.steps, params.guidance) == (3, 256, 128, 10, 7.5)
    assert (params.negative_prompt, params.seed, params.output_format, params.output_compression) == (
        "",
        42,
        "webp",
        80,
    )


def test_size_auto_is_the_default_size() -> None:
    params = resolve(body(prompt="a", size="auto"))
    assert (params.width, params.height) == (512, 512)


def test_integer_guidance_is_accepted_as_a_number() -> None:
    assert resolve(body(prompt="a", guidance_scale=3)).guidance == 3.0


def test_style_preset_templates_the_prompt() -> None:
    presets = {"anime": StylePreset(prompt="{prompt}, anime style", negative_prompt="photo")}
    params = resolve(body(prompt="a cat", style="anime"), presets=presets)
    assert (params.prompt, params.negative_prompt) == ("a cat, anime style", "photo")
    assert resolve(body(prompt="a cat", style="vivid")).prompt == "a cat"


def test_batch_key_ignores_prompt_seed_and_output_format_but_not_shape() -> None:
    a = resolve(body(prompt="a", seed=1))
    b = resolve(body(prompt="b", seed=2, n=2))
    c = resolve(body(prompt="a", size="256x256"))
    jpeg = resolve(body(prompt="a", output_format="jpeg", output_compression=50))
    assert a.batch_key == b.batch_key == jpeg.batch_key
    assert a.batch_key != c.batch_key


def test_response_echo_only_uses_openai_response_enum_values() -> None:
    request = parse_generation_request(body(prompt="a", size="1024x1024", quality="hd", background="opaque"), JSON)
    params = resolve_params(request, DEFAULTS, LIMITS)
    assert response_echo(request, params) == {"output_format": "png", "size": "1024x1024", "background": "opaque"}
    small = parse_generation_request(body(prompt="a", size="512x512", quality="high"), JSON)
    assert response_echo(small, resolve_params(small, DEFAULTS, LIMITS)) == {"output_format": "png", "quality": "high"}


def test_limits_and_defaults_accept_camel_case_and_reject_inverted_sizes() -> None:
    limits = GenerationLimits.model_validate({"minSize": 128, "maxSize": 512, "maxN": 2})
    assert (limits.min_size, limits.max_size, limits.max_n) == (128, 512, 2)
    defaults = GenerationDefaults.model_validate({"negativePrompt": "x", "size": "64x64"})
    assert defaults.width_height == (64, 64)
    with pytest.raises(ValueError, match="minSize"):
        GenerationLimits.model_validate({"minSize": 1024, "maxSize": 512})
    with pytest.raises(ValueError):
        GenerationDefaults.model_validate({"size": "big"})
