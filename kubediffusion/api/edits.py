"""``POST /v1/images/edits`` and ``/v1/images/variations``: a multipart form -> a checked request -> parameters.

Used as the generation contract is (:mod:`kubediffusion.api.schema`): the router parses and resolves
against the named model, so bad input never reaches a pod, then forwards the client's own bytes; the
pod parses and resolves again, decodes the images and queues the work. Two steps, because the
per-model ceilings are only known once ``model`` is read:

1. :func:`parse_edit_request` / :func:`parse_variation_request`: the form (bounded, see
   :mod:`.multipart`), field names (unknown -> 400 ``unknown_parameter``, as for JSON), field values
   (form text -> typed, then the same pydantic rules as JSON), the images (sniffed, not decoded, see
   :mod:`.imageinput`) and the mask (same size as the first image, with an alpha channel).
2. :func:`resolve_edit_params`: the model's defaults and limits, including its input-image ceilings.

Fields: OpenAI's (``image`` or ``image[]`` up to 16, ``mask``, ``prompt``, ``n``, ``size``,
``response_format``, ``output_format``, ``output_compression``, ``quality``, ``background``,
``input_fidelity`` (accepted, no effect), ``stream``, ``partial_images``, ``user``; variations: ``image``,
``n``, ``size``, ``response_format``, ``user``, no prompt) plus ours on both: ``strength`` [0.01, 1], ``seed``,
``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ``output_format``/``output_compression``,
``scheduler``, ``adapters`` (a JSON list of ``{name, scale}``, as in a generation request; also the model
name ``<model>:<adapter>``) and the router's ``store``/``conversation_id``. An empty form value means the
default, except in free text (``prompt``, ``negative_prompt``, ``user``, ``conversation_id``).

Semantics (the pods implement them): each input image is edited on its own, ``n`` images each, so an
answer holds ``len(images) * n`` images (within the model's ``maxN``), image by image. ``size`` null
or ``auto`` is each input's own size fitted into the model's limits (aspect kept where the limits allow,
multiples of 8). The mask applies to the first image, as OpenAI's does; without a mask, an image's own
alpha channel is its mask. Transparent pixels (alpha 0) are repainted (inpainting); an image with no
transparent pixel is edited whole (image-to-image). Variations are image-to-image with an empty prompt.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubediffusion.api.errors import InvalidRequestError, validation_error_from_pydantic
from kubediffusion.api.imageinput import ImageInfo, check_dimensions, input_limits, sniff_image
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, RequestedSize
from kubediffusion.api.multipart import FormPart, MultipartLimits, parse_multipart
from kubediffusion.api.pipelines import MAX_REQUEST_ADAPTERS, AdapterRequest, PipelineOptions, resolve_choice
from kubediffusion.api.schema import (
    MAX_CONVERSATION_ID_CHARS,
    MAX_PARTIAL_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    SIZE_MULTIPLE,
    GenerationParams,
    OutputFormat,
    ResponseFormat,
    check_background,
    check_n,
    check_steps,
    check_texts,
    echo_fields,
    resolve_size,
)

Task = Literal["edit", "variation"]
MAX_IMAGES = 16  # OpenAI's limit for image[]
MIN_STRENGTH = 0.01  # bounds the schedule a pod lengthens so that at least one step runs
MAX_TEXT_FIELD_BYTES = 4 * MAX_PROMPT_CHARS + 1024  # checked before a text part is decoded
IMAGE_FIELDS: dict[Task, frozenset[str]] = {
    "edit": frozenset({"image", "image[]", "mask"}),
    "variation": frozenset({"image"}),
}
# Strength when the request names none: image-to-image keeps a quarter of the input's structure for an
# edit (the prompt leads), more for a variation (nothing else leads); inpainting repaints its region whole.
DEFAULT_STRENGTH = {"edit": 0.75, "variation": 0.6, "inpaint": 1.0}
_INT = re.compile(r"[+-]?[0-9]{1,20}")
_FLOAT = re.compile(r"[+-]?([0-9]{1,20}(\.[0-9]{0,20})?|\.[0-9]{1,20})([eE][+-]?[0-9]{1,3})?")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}
_FREE_TEXT = frozenset({"prompt", "negative_prompt", "user", "conversation_id"})
_BOOL_FIELDS = frozenset({"store", "stream"})
_INT_FIELDS = frozenset({"n", "output_compression", "partial_images", "seed", "num_inference_steps"})
_FLOAT_FIELDS = frozenset({"strength", "guidance_scale"})
_JSON_FIELDS = frozenset({"adapters"})


class _ImageInputFields(BaseModel):
    """The text fields edits and variations share; unknown ones are a 400, as for JSON."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    n: Annotated[int, Field(ge=1, le=10)] | None = None
    size: RequestedSize = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    user: str | None = None
    store: bool | None = None
    conversation_id: Annotated[str, Field(max_length=MAX_CONVERSATION_ID_CHARS)] | None = None
    strength: Annotated[float, Field(ge=MIN_STRENGTH, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    adapters: Annotated[list[AdapterRequest], Field(max_length=MAX_REQUEST_ADAPTERS)] | None = None
    scheduler: Annotated[str, Field(min_length=1, max_length=100)] | None = None


class ImageEditFields(_ImageInputFields):
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    quality: Literal["standard", "low", "medium", "high", "auto"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    input_fidelity: Literal["high", "low"] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Field(ge=0, le=MAX_PARTIAL_IMAGES)] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


class ImageVariationFields(_ImageInputFields):
    pass


_FIELD_MODELS: dict[Task, type[_ImageInputFields]] = {"edit": ImageEditFields, "variation": ImageVariationFields}


@dataclass(frozen=True)
class UploadedImage:
    """One uploaded image: the client's bytes, unchanged, and what its header says."""

    data: bytes
    info: ImageInfo
    param: str  # the form field it came in: "image", "image[]" or "mask"
    filename: str | None = None


@dataclass(frozen=True)
class EditRequest:
    """A parsed edit or variation. ``parts`` is the form as sent (the router re-encodes it when it must
    change a field, see :func:`kubediffusion.api.multipart.replace_fields`)."""

    task: Task
    fields: ImageEditFields | ImageVariationFields
    images: tuple[UploadedImage, ...]
    mask: UploadedImage | None
    parts: tuple[FormPart, ...]

    @property
    def model(self) -> str | None:
        return self.fields.model

    @property
    def response_format(self) -> ResponseFormat | None:
        return self.fields.response_format

    @property
    def stream(self) -> bool:
        return isinstance(self.fields, ImageEditFields) and bool(self.fields.stream)


def parse_edit_request(body: bytes, content_type: str | None, limits: MultipartLimits | None = None) -> EditRequest:
    """Raw body of ``POST /v1/images/edits`` -> request, or a 4xx naming the param (see the module)."""
    return _parse("edit", body, content_type, limits)


def parse_variation_request(
    body: bytes, content_type: str | None, limits: MultipartLimits | None = None
) -> EditRequest:
    """Raw body of ``POST /v1/images/variations`` -> request, or a 4xx naming the param."""
    return _parse("variation", body, content_type, limits)


def _parse(task: Task, body: bytes, content_type: str | None, limits: MultipartLimits | None) -> EditRequest:
    parts = parse_multipart(body, content_type, limits)
    model = _FIELD_MODELS[task]
    image_fields = IMAGE_FIELDS[task]
    texts: dict[str, FormPart] = {}
    for part in parts:  # names and sizes first: nothing is decoded before they are all known good
        if part.name in image_fields:
            continue
        if part.name not in model.model_fields:
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {part.name}", param=part.name, code="unknown_parameter"
            )
        if part.name in texts:
            raise InvalidRequestError(
                f"Duplicate parameter: '{part.name}' was sent more than once.",
                param=part.name,
                code="duplicate_parameter",
            )
        if len(part.data) > MAX_TEXT_FIELD_BYTES:
            raise InvalidRequestError(
                f"Invalid '{part.name}': the value is longer than {MAX_TEXT_FIELD_BYTES} bytes.",
                param=part.name,
                code="string_above_max_length",
            )
        texts[part.name] = part
    sources = [part for part in parts if part.name in ("image", "image[]")]
    masks = [part for part in parts if part.name == "mask"]
    most = MAX_IMAGES if task == "edit" else 1
    if len(sources) > most:
        raise InvalidRequestError(
            f"Invalid 'image': at most {most} image{'s' if most > 1 else ''} per request.",
            param="image",
            code="too_many_images",
        )
    if len(masks) > 1:
        raise InvalidRequestError("Invalid 'mask': at most one mask.", param="mask", code="duplicate_parameter")
    values = {name: _typed(name, part.data) for name, part in texts.items()}
    try:
        fields = model.model_validate({k: v for k, v in values.items() if v is not None or k in _FREE_TEXT})
    except ValidationError as exc:
        raise validation_error_from_pydantic(list(exc.errors())) from None
    if not sources:
        raise InvalidRequestError(
            "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
        )
    images = tuple(_uploaded(part) for part in sources)
    mask = _uploaded(masks[0]) if masks else None
    if mask is not None:
        if not mask.info.has_alpha:
            raise InvalidRequestError(
                "Invalid 'mask': the mask must have an alpha channel (a PNG or WebP with transparency); its "
                "fully transparent pixels mark where the image is edited.",
                param="mask",
                code="mask_without_alpha",
            )
        first = images[0].info
        if (mask.info.width, mask.info.height) != (first.width, first.height):
            raise InvalidRequestError(
                f"Invalid 'mask': it is {mask.info.width}x{mask.info.height} but the image is "
                f"{first.width}x{first.height}; they must be the same size.",
                param="mask",
                code="mask_size_mismatch",
            )
    return EditRequest(task, cast(ImageEditFields | ImageVariationFields, fields), images, mask, tuple(parts))


def _uploaded(part: FormPart) -> UploadedImage:
    param = "mask" if part.name == "mask" else "image"
    return UploadedImage(part.data, sniff_image(part.data, param), param, part.filename)


def _typed(name: str, raw: bytes) -> Any:
    """A form value (text) as the type its field declares; None for an empty value (= the default)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(
            f"Invalid value for '{name}': it is not valid UTF-8 text.", param=name, code="invalid_value"
        ) from None
    if not text and name not in _FREE_TEXT:
        return None
    stripped = text.strip()
    if name in _BOOL_FIELDS:
        if stripped.lower() in _BOOLS:
            return _BOOLS[stripped.lower()]
        kind = "a boolean (true or false)"
    elif name in _INT_FIELDS:
        if _INT.fullmatch(stripped):
            return int(stripped)
        kind = "an integer"
    elif name in _FLOAT_FIELDS:
        if _FLOAT.fullmatch(stripped) and math.isfinite(float(stripped)):
            return float(stripped)
        kind = "a number"
    elif name in _JSON_FIELDS:
        try:
            return json.loads(stripped)  # NaN and Infinity: refused by the field's own bounds
        except (ValueError, RecursionError):
            kind = "JSON (a list of {name, scale} objects)"
    else:
        return text
    raise InvalidRequestError(f"Invalid value for '{name}': expected {kind}.", param=name, code="invalid_value")


@dataclass(frozen=True)
class EditSource:
    """One input image and the size its outputs have; ``mask`` only on the first (OpenAI's rule)."""

    image: UploadedImage
    mask: UploadedImage | None
    width: int
    height: int


@dataclass(frozen=True)
class EditParams:
    """A request resolved against one model. ``params`` carries what every source shares (its width and
    height are the first source's); ``strength`` None means :data:`DEFAULT_STRENGTH` of each source's kind."""

    task: Task
    params: GenerationParams
    sources: tuple[EditSource, ...]
    strength: float | None
    quality: str | None = None
    background: str | None = None

    @property
    def images(self) -> int:
        return self.params.n * len(self.sources)

    def echo(self) -> dict[str, str]:
        """The response's echoed fields (``size`` only when every output has the same size)."""
        echo = echo_fields(self.params, quality=self.quality, background=self.background)
        if len({(source.width, source.height) for source in self.sources}) > 1:
            echo.pop("size", None)
        return echo


def fit_size(width: int, height: int, limits: GenerationLimits) -> tuple[int, int]:
    """An input's own size as an output size: scaled (aspect kept) into [min_size, max_size] where it
    can be, each side then clamped there and rounded down to a multiple of 8."""
    scale = min(1.0, limits.max_size / max(width, height))
    if min(width, height) * scale < limits.min_size:
        scale = limits.min_size / min(width, height)
    low = math.ceil(limits.min_size / SIZE_MULTIPLE) * SIZE_MULTIPLE
    high = max(SIZE_MULTIPLE, limits.max_size // SIZE_MULTIPLE * SIZE_MULTIPLE)

    def side(value: int) -> int:
        rounded = int(value * scale + 0.5) // SIZE_MULTIPLE * SIZE_MULTIPLE
        return min(high, max(low, rounded))

    return side(width), side(height)


def resolve_edit_params(
    request: EditRequest,
    defaults: GenerationDefaults,
    limits: GenerationLimits,
    *,
    pipeline: PipelineOptions | None = None,
    model_adapter: str | None = None,
) -> EditParams:
    """Apply a model's defaults, limits (input images included) and pipeline options (as
    :func:`kubediffusion.api.schema.resolve_params` does); a 4xx naming the param."""
    fields = request.fields
    edit = fields if isinstance(fields, ImageEditFields) else None
    prompt = edit.prompt if edit is not None else ""
    check_texts(prompt, fields.negative_prompt, limits)
    choice = resolve_choice(
        pipeline,
        prompt=prompt,
        adapters=fields.adapters,
        scheduler=fields.scheduler,
        moderation=None,
        model=fields.model,
        model_adapter=model_adapter,
    )
    check_background(edit.background if edit is not None else None)
    n = check_n(fields.n, limits, images_per_n=len(request.images))
    steps = check_steps(fields.num_inference_steps, defaults, limits)
    ceilings = input_limits(limits)
    for image in (*request.images, *([request.mask] if request.mask else [])):
        if len(image.data) > ceilings.max_bytes:
            raise InvalidRequestError(
                f"Invalid '{image.param}': the file is {len(image.data)} bytes; at most {ceilings.max_bytes} "
                "for this model.",
                param=image.param,
                code="image_too_large",
            )
        check_dimensions(image.info, image.param, ceilings)
    explicit = fields.size not in (None, "auto")
    sources = tuple(
        EditSource(
            image,
            request.mask if index == 0 else None,
            *(
                resolve_size(fields.size, defaults, limits)
                if explicit
                else fit_size(image.info.width, image.info.height, limits)
            ),
        )
        for index, image in enumerate(request.images)
    )
    negative = fields.negative_prompt if fields.negative_prompt is not None else defaults.negative_prompt
    guidance = fields.guidance_scale
    if guidance is None:
        # A variation has no prompt: guidance against an empty negative prompt only doubles the work.
        guidance = 0.0 if edit is None and not negative else defaults.guidance
    stream = edit is not None and bool(edit.stream)
    params = GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        n=n,
        width=sources[0].width,
        height=sources[0].height,
        steps=steps,
        guidance=guidance,
        seed=fields.seed,
        output_format=fields.output_format or "png",
        output_compression=fields.output_compression if fields.output_compression is not None else 100,
        stream=stream,
        partial_images=(edit.partial_images or 0) if edit is not None and stream else 0,
        pipeline=choice,
    )
    return EditParams(
        request.task,
        params,
        sources,
        fields.strength,
        quality=edit.quality if edit is not None else None,
        background=edit.background if edit is not None else None,
    )
