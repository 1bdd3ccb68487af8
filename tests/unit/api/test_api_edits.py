"""Edits and variations in the shared contract: the form's fields typed as JSON's are, images sniffed,
the mask checked, then the model's defaults and limits (its input-image ceilings included)."""

from __future__ import annotations

import json

import pytest

from kubediffusion.api.edits import (
    DEFAULT_STRENGTH,
    MAX_IMAGES,
    ImageEditFields,
    fit_size,
    parse_edit_request,
    parse_variation_request,
    resolve_edit_params,
)
from kubediffusion.api.errors import APIError, error_response
from kubediffusion.api.limits import GenerationLimits
from tests.unit.api.bad_uploads import BAD_UPLOADS, DEFAULTS, LIMITS, VARIATIONS, BadUpload
from tests.unit.api.sample_images import form, image_file, mask_png, png

API_CASES = [case for case in BAD_UPLOADS if case.stage == "api"]


def parse_and_resolve(case: BadUpload) -> object:
    parse = parse_variation_request if case.path == VARIATIONS else parse_edit_request
    return resolve_edit_params(parse(case.body, case.content_type), DEFAULTS, LIMITS)


@pytest.mark.parametrize("case", API_CASES, ids=[case.case for case in API_CASES])
def test_bad_upload_is_a_4xx_envelope_naming_the_param(case: BadUpload) -> None:
    with pytest.raises(APIError) as caught:
        parse_and_resolve(case)
    response = error_response(caught.value)
    error = json.loads(bytes(response.body))["error"]
    assert (response.status_code, error["param"]) == (case.status, case.param), error
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if case.code is not None:
        assert error["code"] == case.code, error


DECODE_CASES = [case for case in BAD_UPLOADS if case.stage == "decode"]


@pytest.mark.parametrize("case", DECODE_CASES, ids=[case.case for case in DECODE_CASES])
def test_what_only_decoding_finds_passes_the_shared_checks(case: BadUpload) -> None:
    """These reach a pod (which refuses them before queueing): the router cannot know without decoding."""
    parse_and_resolve(case)


def test_form_values_are_typed_like_json_and_empty_means_default() -> None:
    body, content_type = form(
        {
            "prompt": "a barn",
            "n": " 2 ",
            "strength": "0.5",
            "guidance_scale": "7",
            "seed": "42",
            "stream": "TRUE",
            "partial_images": "1",
            "store": "0",
            "size": "",
            "output_format": "",
            "negative_prompt": "",
            "conversation_id": "c-1",
            "user": "u",
            "input_fidelity": "high",
            "quality": "high",
        },
        [("image", png((100, 60)))],
    )
    request = parse_edit_request(body, content_type)
    fields = request.fields
    assert isinstance(fields, ImageEditFields)
    assert (fields.n, fields.strength, fields.guidance_scale, fields.seed) == (2, 0.5, 7.0, 42)
    assert (fields.stream, fields.partial_images, fields.store) == (True, 1, False)
    assert (fields.size, fields.output_format, fields.negative_prompt) == (None, None, "")
    assert request.stream and request.model is None and request.response_format is None
    edit = resolve_edit_params(request, DEFAULTS, LIMITS)
    params = edit.params
    assert (params.n, params.width, params.height, params.guidance, params.seed) == (2, 104, 64, 7.0, 42)
    assert (params.stream, params.partial_images, params.negative_prompt) == (True, 1, "")
    assert edit.strength == 0.5 and edit.images == 2
    assert edit.echo() == {"output_format": "png", "quality": "high"}


def test_several_images_each_make_n_and_only_the_first_gets_the_mask() -> None:
    images = [("image[]", png((64, 64))), ("image[]", png((128, 64), mode="RGBA")), ("mask", mask_png((64, 64)))]
    body, content_type = form({"prompt": "p", "n": "2"}, images)
    request = parse_edit_request(body, content_type)
    assert [image.info.width for image in request.images] == [64, 128]
    assert request.mask is not None and request.mask.param == "mask"
    edit = resolve_edit_params(request, DEFAULTS, LIMITS)
    assert [(s.width, s.height, s.mask is not None) for s in edit.sources] == [(64, 64, True), (128, 64, False)]
    assert edit.images == 4 and "size" not in edit.echo()
    sized = resolve_edit_params(parse_edit_request(*form({"prompt": "p", "size": "96x64"}, images)), DEFAULTS, LIMITS)
    assert [(s.width, s.height) for s in sized.sources] == [(96, 64), (96, 64)]


def test_variation_has_no_prompt_and_no_guidance_unless_a_negative_prompt_gives_it_a_use() -> None:
    body, content_type = form({}, [("image", image_file((64, 64), "JPEG"))])
    edit = resolve_edit_params(parse_variation_request(body, content_type), DEFAULTS, LIMITS)
    assert (edit.task, edit.params.prompt, edit.params.guidance, edit.strength) == ("variation", "", 0.0, None)
    negative = DEFAULTS.model_copy(update={"negative_prompt": "blurry", "guidance": 6.0})
    assert resolve_edit_params(parse_variation_request(body, content_type), negative, LIMITS).params.guidance == 6.0
    assert DEFAULT_STRENGTH["variation"] < DEFAULT_STRENGTH["edit"] < DEFAULT_STRENGTH["inpaint"] == 1.0


def test_the_openai_limit_of_16_images_is_accepted() -> None:
    body, content_type = form({"prompt": "p"}, [("image[]", png())] * MAX_IMAGES)
    assert len(parse_edit_request(body, content_type).images) == MAX_IMAGES


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), (64, 64)),
        ((100, 60), (104, 64)),  # scaled up to the minimum side, aspect kept, multiples of 8
        ((1024, 512), (256, 128)),  # scaled down to the maximum side
        ((4096, 64), (256, 64)),  # too thin to keep its aspect: each side clamped
        ((250, 250), (248, 248)),
    ],
)
def test_auto_size_fits_the_input_into_the_models_limits(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert fit_size(*size, LIMITS) == expected


def test_auto_size_stays_within_limits_that_are_not_multiples_of_8() -> None:
    odd = GenerationLimits(min_size=60, max_size=250)
    assert fit_size(30, 30, odd) == (64, 64)
    assert fit_size(1000, 1000, odd) == (248, 248)
