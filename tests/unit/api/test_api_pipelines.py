"""Pipeline options in the shared contract: the settings' shapes, and how a request's adapters (field or
``<model>:<adapter>``), scheduler and moderation resolve against a model (the batch key follows)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kubediffusion.api.edits import parse_edit_request, resolve_edit_params
from kubediffusion.api.errors import (
    AdapterNotFoundError,
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
    ModerationBlockedError,
    error_response,
)
from kubediffusion.api.pipelines import (
    AdapterConfig,
    AdapterRequest,
    ComponentConfig,
    PipelineChoice,
    PipelineOptions,
    SafetyConfig,
    SchedulerConfig,
)
from kubediffusion.api.schema import parse_generation_request, resolve_params
from tests.unit.api.bad_uploads import DEFAULTS, LIMITS
from tests.unit.api.sample_images import form, png

JSON = "application/json"
NAMES = frozenset({"tiny", "dall-e-2"})
OPTIONS = PipelineOptions.of(
    [AdapterConfig(name="style-a", path="/a"), AdapterConfig(name="style-b", path="/b", default_scale=0.5)],
    SchedulerConfig(name="EulerDiscreteScheduler", allowed=["DDIMScheduler"]),
    SafetyConfig(blocked_terms=["forbidden fruit"], allow_low_moderation=True),
)


def resolve(options: PipelineOptions | None = OPTIONS, **fields: Any) -> Any:
    request = parse_generation_request(json.dumps({"prompt": "a cat", **fields}).encode(), JSON)
    adapter = options.model_adapter(request.model, NAMES) if options is not None else None
    return resolve_params(request, DEFAULTS, LIMITS, pipeline=options, model_adapter=adapter)


def envelope(error: APIError) -> tuple[int, dict[str, Any]]:
    response = error_response(error)
    return response.status_code, json.loads(bytes(response.body))["error"]


@pytest.mark.parametrize(
    "values",
    [
        {"name": "Style", "path": "/a"},  # upper case
        {"name": "style.a", "path": "/a"},  # "." would break PEFT's module keys
        {"name": "style:a", "path": "/a"},  # ":" separates model and adapter
        {"name": "-a", "path": "/a"},
        {"name": "a" * 64, "path": "/a"},
        {"name": "a", "path": ""},
        {"name": "a", "path": "/a", "file": "lora.bin"},  # pickles are never loaded
        {"name": "a", "path": "/a", "file": "../other/lora.safetensors"},
        {"name": "a", "path": "/a", "file": "/abs/lora.safetensors"},
        {"name": "a", "path": "/a/lora.safetensors", "file": "lora.safetensors"},  # which one?
        {"name": "a", "path": "/a", "defaultScale": 2.5},
        {"name": "a", "path": "/a", "defaultScale": float("nan")},
        {"name": "a", "path": "/a", "unknown": 1},
    ],
)
def test_invalid_adapter_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AdapterConfig.model_validate(values)


def test_adapter_and_component_settings_take_camel_case_and_a_weight_file() -> None:
    adapter = AdapterConfig.model_validate({"name": "style-a", "path": "/m/adapters/style-a", "defaultScale": -1.5})
    assert (adapter.default_scale, adapter.file) == (-1.5, None)
    assert AdapterConfig(name="a_1", path="/a", file="sub/x.safetensors").file == "sub/x.safetensors"
    unet = ComponentConfig.model_validate(
        {"path": "/m/components/unet", "file": "sdxl_lightning_4step_unet.safetensors"}
    )
    assert unet.file == "sdxl_lightning_4step_unet.safetensors"
    with pytest.raises(ValidationError):
        ComponentConfig(path="/m/unet", file="unet.ckpt")


@pytest.mark.parametrize(
    "values",
    [{"name": "Euler Discrete"}, {"name": "diffusers.DDIMScheduler"}, {"allowed": ["x;y"]}, {"other": 1}],
)
def test_invalid_scheduler_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SchedulerConfig.model_validate(values)


@pytest.mark.parametrize("terms", [[""], ["   "], ["***"], ["x" * 201]])
def test_blocked_terms_need_a_letter_or_digit_and_a_bounded_length(terms: list[str]) -> None:
    with pytest.raises(ValidationError):
        SafetyConfig(blocked_terms=terms)


def test_safety_defaults_check_what_the_pipeline_ships_and_reject() -> None:
    safety = SafetyConfig()
    assert (safety.checker, safety.action, safety.blocked_terms, safety.allow_low_moderation) == (
        "auto",
        "reject",
        [],
        False,
    )
    assert safety.checker_path is None and SafetyConfig(checker="/models/checker").checker_path == "/models/checker"
    with pytest.raises(ValidationError):
        SafetyConfig.model_validate({"action": "black"})


def test_no_pipeline_fields_resolve_to_the_base_model_and_default_scheduler() -> None:
    assert resolve().pipeline == PipelineChoice()


def test_model_name_with_an_adapter_picks_it_at_its_default_scale_also_through_an_alias() -> None:
    assert resolve(model="tiny:style-b").pipeline.adapters == (("style-b", 0.5),)
    assert resolve(model="dall-e-2:style-a").pipeline.adapters == (("style-a", 1.0),)
    assert OPTIONS.model_adapter("tiny", NAMES) is None and OPTIONS.model_adapter(None, NAMES) is None


@pytest.mark.parametrize("model", ["tiny:nope", "other:style-a", "tiny:", ":style-a", "style-a", "tiny:style-a:x"])
def test_unknown_model_or_adapter_in_the_name_is_404_model_not_found(model: str) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        OPTIONS.model_adapter(model, NAMES)
    assert envelope(caught.value) == (
        404,
        {"message": caught.value.message, "type": "invalid_request_error", "param": "model", "code": "model_not_found"},
    )


def test_a_served_name_with_a_colon_is_its_own_name_before_an_adapter() -> None:
    assert OPTIONS.model_adapter("sdxl:v2", frozenset({"sdxl:v2"})) is None


def test_adapters_field_several_at_once_sorted_scales_defaulted_zero_left_out() -> None:
    choice = resolve(adapters=[{"name": "style-b"}, {"name": "style-a", "scale": -2}]).pipeline
    assert choice.adapters == (("style-a", -2.0), ("style-b", 0.5))
    assert resolve(adapters=[{"name": "style-a", "scale": 0}]).pipeline == PipelineChoice()
    assert resolve(adapters=[]).pipeline == PipelineChoice()
    # The list's scale wins over the model name's default.
    assert resolve(model="tiny:style-b", adapters=[{"name": "style-b", "scale": 1.5}]).pipeline.adapters == (
        ("style-b", 1.5),
    )


def test_unknown_adapter_in_the_field_is_404_model_not_found_naming_adapters() -> None:
    with pytest.raises(AdapterNotFoundError) as caught:
        resolve(model="tiny", adapters=[{"name": "style-a"}, {"name": "nope"}])
    status, error = envelope(caught.value)
    assert (status, error["param"], error["code"]) == (404, "adapters", "model_not_found")
    assert "'nope'" in error["message"] and "'tiny'" in error["message"]


@pytest.mark.parametrize(
    ("adapters", "param"),
    [
        ([{"name": "style-a", "scale": 2.01}], "adapters.0.scale"),
        ([{"name": "style-a", "scale": -2.5}], "adapters.0.scale"),
        ([{"name": "style-a", "scale": "1"}], "adapters.0.scale"),
        ([{"name": "style-a", "weight": 1}], "adapters.0.weight"),
        ([{"scale": 1}], "adapters.0.name"),
        ([{"name": ""}], "adapters.0.name"),
        ({"name": "style-a"}, "adapters"),
        ([{"name": "style-a"}] * 9, "adapters"),
        ([{"name": "style-a"}, {"name": "style-a", "scale": 1}], "adapters"),
    ],
)
def test_bad_adapters_field_is_400_naming_the_param(adapters: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve(adapters=adapters)
    status, error = envelope(caught.value)
    assert (status, error["param"]) == (400, param), error


def test_scheduler_from_the_allow_list_the_default_normalized_anything_else_400() -> None:
    assert resolve(scheduler="DDIMScheduler").pipeline.scheduler == "DDIMScheduler"
    assert resolve(scheduler="EulerDiscreteScheduler").pipeline.scheduler is None  # the model's own
    with pytest.raises(InvalidRequestError) as caught:
        resolve(scheduler="LMSDiscreteScheduler")
    status, error = envelope(caught.value)
    assert (status, error["param"], error["code"]) == (400, "scheduler", "invalid_value")
    assert "DDIMScheduler" in error["message"]
    with pytest.raises(InvalidRequestError):
        resolve(PipelineOptions(), scheduler="DDIMScheduler")  # a model that offers no choice


def test_moderation_low_only_where_the_model_allows_it() -> None:
    assert resolve(moderation="low").pipeline.moderation == "low"
    strict = PipelineOptions.of([], SchedulerConfig(), SafetyConfig())
    assert resolve(strict, moderation="low").pipeline.moderation == "auto"
    assert resolve(moderation="auto").pipeline.moderation == "auto"


def test_blocked_prompt_is_moderation_blocked_in_openais_shape_without_the_term() -> None:
    with pytest.raises(ModerationBlockedError) as caught:
        resolve(prompt="A FORBIDDEN  fruit, please")
    status, error = envelope(caught.value)
    assert status == 400
    assert (error["type"], error["code"], error["param"]) == (
        "image_generation_user_error",
        "moderation_blocked",
        "prompt",
    )
    assert error["moderation_details"] == {"moderation_stage": "input"}
    assert "forbidden" not in error["message"].lower()
    resolve(prompt="a forbidden door")  # one word of the term is not the term


def test_blocked_terms_are_checked_before_adapters_and_scheduler() -> None:
    with pytest.raises(ModerationBlockedError):
        resolve(prompt="forbidden fruit", adapters=[{"name": "nope"}], scheduler="Nope")


def test_without_options_the_request_is_taken_as_sent() -> None:
    choice = resolve(None, adapters=[{"name": "anything", "scale": 0.5}, {"name": "b"}], scheduler="X").pipeline
    assert choice == PipelineChoice((("anything", 0.5), ("b", 1.0)), "X", "auto")


def test_batch_key_splits_adapter_sets_scales_and_schedulers_not_moderation() -> None:
    base = resolve().batch_key
    assert resolve(model="tiny:style-a").batch_key != base
    assert resolve(model="tiny:style-a").batch_key == resolve(adapters=[{"name": "style-a", "scale": 1}]).batch_key
    assert resolve(model="tiny:style-a").batch_key != resolve(adapters=[{"name": "style-a", "scale": 0.9}]).batch_key
    assert resolve(scheduler="DDIMScheduler").batch_key != base
    assert resolve(moderation="low").batch_key == base
    assert resolve(adapters=[{"name": "style-a", "scale": 0}]).batch_key == base


def test_request_adapters_are_strict() -> None:
    with pytest.raises(ValidationError):
        AdapterRequest.model_validate({"name": "a", "scale": "1.0"})
    assert AdapterRequest.model_validate({"name": "a", "scale": 1}).scale == 1.0


def test_edit_form_takes_adapters_as_json_text_the_scheduler_and_the_model_name_form() -> None:
    body, content_type = form(
        {"prompt": "a barn", "model": "tiny:style-b", "adapters": '[{"name": "style-a", "scale": 0.25}]'},
        [("image", png((64, 64)))],
    )
    request = parse_edit_request(body, content_type)
    adapter = OPTIONS.model_adapter(request.model, NAMES)
    edit = resolve_edit_params(request, DEFAULTS, LIMITS, pipeline=OPTIONS, model_adapter=adapter)
    assert edit.params.pipeline.adapters == (("style-a", 0.25), ("style-b", 0.5))
    body, content_type = form({"prompt": "a barn", "scheduler": "DDIMScheduler"}, [("image", png((64, 64)))])
    edit = resolve_edit_params(parse_edit_request(body, content_type), DEFAULTS, LIMITS, pipeline=OPTIONS)
    assert edit.params.pipeline.scheduler == "DDIMScheduler"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": "a barn", "adapters": "[{"}, "adapters"),
        ({"prompt": "a barn", "adapters": '[{"name": "style-a", "scale": NaN}]'}, "adapters.0.scale"),
        ({"prompt": "a barn", "adapters": '[{"name": "style-a", "scale": 3}]'}, "adapters.0.scale"),
        ({"prompt": "a barn", "scheduler": "Nope"}, "scheduler"),
        ({"prompt": "forbidden fruit"}, "prompt"),
    ],
)
def test_bad_pipeline_fields_of_an_edit_are_4xx_naming_the_param(fields: dict[str, str], param: str) -> None:
    body, content_type = form(fields, [("image", png((64, 64)))])
    with pytest.raises(APIError) as caught:
        resolve_edit_params(parse_edit_request(body, content_type), DEFAULTS, LIMITS, pipeline=OPTIONS)
    assert caught.value.param == param
