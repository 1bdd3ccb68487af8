"""The OpenAI Images API request/response contract, and how a request becomes generation parameters.

One definition of a valid request, used by both the router (so bad input never reaches a GPU) and the
inference server. Extensions follow vLLM-Omni's names: ``negative_prompt``, ``num_inference_steps``,
``guidance_scale``, ``seed``. Every optional field accepts JSON ``null`` meaning "the default".

Fields the pods ignore but accept, because the services this project replaces send them: ``user``,
``store`` (keep the images for ``GET /v1/images/{id}``; the router's business, default per deployment)
and ``conversation_id`` (a client's grouping of stored images; the router's business too). ``stream``
with ``partial_images`` (0-3) asks for Server-Sent Events (:mod:`kubediffusion.api.events`).
Pipeline extensions (:mod:`kubediffusion.api.pipelines`): ``adapters`` (LoRA adapters and their scales),
``scheduler`` (a class from the model's allow-list); OpenAI's ``moderation`` (``low`` relaxes only what
the model allows). A response may carry ``moderation`` when the image checker flagged images.
Edits and variations (multipart) are :mod:`kubediffusion.api.edits`; they share the checks below.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubediffusion.api.errors import InvalidRequestError, UnsupportedMediaTypeError, validation_error_from_pydantic
from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, RequestedSize, StylePreset, parse_size
from kubediffusion.api.pipelines import (
    MAX_REQUEST_ADAPTERS,
    AdapterRequest,
    PipelineChoice,
    PipelineOptions,
    resolve_choice,
)

MAX_PROMPT_CHARS = 32000  # OpenAI's own ceiling (GPT image models); models set lower ones.
MAX_SEED = 2**63 - 1
SIZE_MULTIPLE = 8
MAX_CONVERSATION_ID_CHARS = 512
MAX_PARTIAL_IMAGES = 3

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]

# Values OpenAI's ImagesResponse schema allows for the echoed fields; others are not echoed.
RESPONSE_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
RESPONSE_QUALITIES = frozenset({"low", "medium", "high"})
RESPONSE_BACKGROUNDS = frozenset({"transparent", "opaque"})


class ImageGenerationRequest(BaseModel):
    """OpenAI ``CreateImageRequest`` plus our extensions. Unknown fields are a 400, as OpenAI answers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=10)] | None = None
    size: RequestedSize = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: str | None = None
    store: bool | None = None
    conversation_id: Annotated[str, Field(max_length=MAX_CONVERSATION_ID_CHARS)] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Field(ge=0, le=MAX_PARTIAL_IMAGES)] | None = None
    negative_prompt: str | None = None
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    adapters: Annotated[list[AdapterRequest], Field(max_length=MAX_REQUEST_ADAPTERS)] | None = None
    scheduler: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


@dataclass(frozen=True)
class GenerationParams:
    """A validated request resolved against one model's defaults and limits.

    ``stream`` and ``partial_images`` (previews per image, 0 unless streaming) are not part of the batch
    key: streaming and plain requests share a pipeline call, each gets its own previews. The adapters
    and scheduler of ``pipeline`` are: they are set on the pipeline for a whole call."""

    prompt: str
    negative_prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int | None
    output_format: OutputFormat
    output_compression: int
    stream: bool = False
    partial_images: int = 0
    pipeline: PipelineChoice = field(default_factory=PipelineChoice)

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call (the output format and quality are not
        part of it: each image is encoded on its own, after the call)."""
        return (self.width, self.height, self.steps, self.guidance, *self.pipeline.batch_key)


def parse_generation_request(body: bytes, content_type: str | None) -> ImageGenerationRequest:
    """Raw HTTP body -> request, or an InvalidRequestError naming what is wrong."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"Invalid Content-Type header ({content_type or 'missing'}), expected application/json."
        )
    try:
        payload: Any = json.loads(body, parse_constant=_not_json)
    # ValueError covers bad JSON, bad UTF-8, NaN/Infinity and integers past Python's digit limit (thousands
    # of digits); RecursionError, nesting too deep. Each is the client's mistake: a 400, never a 500.
    except (ValueError, RecursionError):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    _reject_unpaired_surrogates(payload)
    try:
        return ImageGenerationRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error_from_pydantic(list(exc.errors())) from None


def _reject_unpaired_surrogates(payload: dict[str, Any]) -> None:
    """JSON can escape half a UTF-16 surrogate pair (``"\\ud800"``); Python then holds a string no UTF-8
    encoder, tokenizer or response body accepts. pydantic refuses it in some fields and not in others, so
    the keys and the text values of the known fields are checked here, once (unknown keys are refused
    by the schema anyway)."""
    for key, value in payload.items():
        if not _is_text(key):
            raise InvalidRequestError(
                "Unrecognized request argument supplied (it is not valid Unicode text).", code="unknown_parameter"
            )
        if key in ImageGenerationRequest.model_fields and isinstance(value, str) and not _is_text(value):
            raise InvalidRequestError(
                f"Invalid value for '{key}': it is not valid Unicode text (an unpaired surrogate).",
                param=key,
                code="invalid_value",
            )


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_json(constant: str) -> Any:
    """``NaN``/``Infinity``: Python's json accepts them, JSON (and OpenAI) does not."""
    raise ValueError(f"{constant} is not valid JSON")


def resolve_params(
    request: ImageGenerationRequest,
    defaults: GenerationDefaults,
    limits: GenerationLimits,
    presets: dict[str, StylePreset] | None = None,
    *,
    pipeline: PipelineOptions | None = None,
    model_adapter: str | None = None,
) -> GenerationParams:
    """Apply a model's defaults, limits, style presets and pipeline options (blocked terms, adapters,
    schedulers; None: taken as sent, unchecked); raise InvalidRequestError with ``param``.
    ``model_adapter`` is the adapter the request's model name picked (``PipelineOptions.model_adapter``)."""
    check_texts(request.prompt, request.negative_prompt, limits)
    choice = resolve_choice(
        pipeline,
        prompt=request.prompt,
        adapters=request.adapters,
        scheduler=request.scheduler,
        moderation=request.moderation,
        model=request.model,
        model_adapter=model_adapter,
    )
    check_background(request.background)
    n = check_n(request.n, limits)
    width, height = resolve_size(request.size, defaults, limits)
    steps = check_steps(request.num_inference_steps, defaults, limits)
    prompt, negative = _apply_style(request, defaults, presets or {})
    output_format: OutputFormat = request.output_format or "png"
    compression = request.output_compression if request.output_compression is not None else 100
    stream = bool(request.stream)
    return GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        n=n,
        width=width,
        height=height,
        steps=steps,
        guidance=request.guidance_scale if request.guidance_scale is not None else defaults.guidance,
        seed=request.seed,
        output_format=output_format,
        output_compression=compression,
        stream=stream,
        partial_images=(request.partial_images or 0) if stream else 0,
        pipeline=choice,
    )


def check_texts(prompt: str, negative_prompt: str | None, limits: GenerationLimits) -> None:
    """The model's ``maxPromptChars`` for ``prompt`` and ``negative_prompt``."""
    for param, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if text is not None and len(text) > limits.max_prompt_chars:
            raise InvalidRequestError(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{limits.max_prompt_chars}, but got a string with length {len(text)} instead.",
                param=param,
                code="string_above_max_length",
            )


def check_background(background: str | None) -> None:
    if background == "transparent":
        # Diffusion pipelines here make opaque RGB images: say so rather than return an opaque one.
        raise InvalidRequestError(
            "Transparent backgrounds are not supported by this model; use 'opaque' or 'auto'.",
            param="background",
            code="unsupported_value",
        )


def check_n(n: int | None, limits: GenerationLimits, *, images_per_n: int = 1) -> int:
    """``n`` (default 1) within the model's ``maxN``; ``images_per_n`` > 1 when each of several input
    images makes ``n`` images (edits), so the whole answer stays within ``maxN``."""
    value = n if n is not None else 1
    if value * images_per_n > limits.max_n:
        per = f" ({images_per_n} input images x n={value})" if images_per_n > 1 else ""
        raise InvalidRequestError(
            f"Invalid 'n': this model generates at most {limits.max_n} images per request{per}.",
            param="n",
            code="integer_above_max_value",
        )
    return value


def check_steps(steps: int | None, defaults: GenerationDefaults, limits: GenerationLimits) -> int:
    value = steps if steps is not None else defaults.steps
    if value > limits.max_steps:
        raise InvalidRequestError(
            f"Invalid 'num_inference_steps': at most {limits.max_steps} for this model.",
            param="num_inference_steps",
            code="integer_above_max_value",
        )
    return value


def resolve_size(size: str | None, defaults: GenerationDefaults, limits: GenerationLimits) -> tuple[int, int]:
    """``WxH`` within the model's limits and a multiple of 8; null or ``auto`` is the model's default."""
    if size is None or size == "auto":
        return defaults.width_height
    width, height = parse_size(size)
    for side in (width, height):
        if side % SIZE_MULTIPLE:
            raise InvalidRequestError(
                f"Invalid 'size': {size}. Width and height must be multiples of {SIZE_MULTIPLE}.",
                param="size",
                code="invalid_value",
            )
        if not limits.min_size <= side <= limits.max_size:
            raise InvalidRequestError(
                f"Invalid 'size': {size}. Width and height must be between {limits.min_size} and "
                f"{limits.max_size} for this model.",
                param="size",
                code="invalid_value",
            )
    return width, height


def _apply_style(
    request: ImageGenerationRequest, defaults: GenerationDefaults, presets: dict[str, StylePreset]
) -> tuple[str, str]:
    negative = request.negative_prompt if request.negative_prompt is not None else defaults.negative_prompt
    style = request.style
    if style is None or (style in ("vivid", "natural") and style not in presets):
        return request.prompt, negative  # OpenAI's own styles are accepted and have no effect here.
    preset = presets.get(style)
    if preset is None:
        choices = ", ".join(sorted({"vivid", "natural", *presets}))
        raise InvalidRequestError(
            f"Invalid 'style': {style!r}. Choose one of: {choices}.", param="style", code="invalid_value"
        )
    prompt = preset.prompt.replace("{prompt}", request.prompt)
    if request.negative_prompt is None and preset.negative_prompt is not None:
        negative = preset.negative_prompt
    return prompt, negative


class ImageData(BaseModel):
    """One ``data[]`` item: OpenAI's ``Image`` plus ``id``, under which the router stores the image
    (``GET /v1/images/{id}``). Pods leave ``id`` out; the router sets it on what it stores."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    id: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class ImagesUsage(BaseModel):
    """OpenAI's ``ImagesUsage``. Diffusion models have no tokens to bill: every count is 0. It is sent
    where OpenAI's schema requires it (the ``*.completed`` stream events), never otherwise."""

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)


class ModerationSummary(BaseModel):
    """Our extension of a response whose images the model's checker flagged: ``reject`` left the
    ``flagged`` images out of ``data``; ``blur`` blurred them, at the ``blurred`` indices of ``data``."""

    action: Literal["reject", "blur"]
    flagged: int
    blurred: list[int] | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: OutputFormat | None = None
    size: str | None = None
    quality: Literal["low", "medium", "high"] | None = None
    usage: ImagesUsage | None = None
    moderation: ModerationSummary | None = None


def response_echo(request: ImageGenerationRequest, params: GenerationParams) -> dict[str, str]:
    """Fields echoed in a response, only with values OpenAI's response schema allows."""
    return echo_fields(params, quality=request.quality, background=request.background)


def echo_fields(params: GenerationParams, *, quality: str | None, background: str | None) -> dict[str, str]:
    """:func:`response_echo` for any request kind (edits and variations have the same echo rules)."""
    echo: dict[str, str] = {"output_format": params.output_format}
    size = f"{params.width}x{params.height}"
    if size in RESPONSE_SIZES:
        echo["size"] = size
    if quality in RESPONSE_QUALITIES:
        echo["quality"] = quality
    if background in RESPONSE_BACKGROUNDS:
        echo["background"] = background
    return echo


def now_seconds() -> int:
    return int(time.time())
