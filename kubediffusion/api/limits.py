"""Per-model generation defaults and limits, shared by the ImageModel spec, router and inference server.

Field names are snake_case in Python and camelCase on the wire (the ImageModel manifest), e.g.
``maxPromptChars``; both spellings are accepted when parsing.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

SIZE_PATTERN = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``; ValueError when it is not ``WxH``."""
    match = SIZE_PATTERN.fullmatch(size)  # not match + "$": that lets a trailing newline through
    if match is None:
        raise ValueError(f"size must look like WIDTHxHEIGHT (for example 1024x1024), got {size!r}")
    return int(match.group(1)), int(match.group(2))


def _requested_size(value: str | None) -> str | None:
    if value is not None and value != "auto":
        parse_size(value)
    return value


# A request's ``size``: ``WxH``, ``auto`` or absent (the model's limits are checked when it is resolved).
RequestedSize = Annotated[str | None, AfterValidator(_requested_size)]


class _CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GenerationDefaults(_CamelModel):
    steps: int = Field(default=4, ge=1, le=500)
    guidance: float = Field(default=0.0, ge=0.0, le=50.0)
    size: str = "1024x1024"
    negative_prompt: str = ""

    @field_validator("size")
    @classmethod
    def _size_is_wxh(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def width_height(self) -> tuple[int, int]:
        return parse_size(self.size)


class GenerationLimits(_CamelModel):
    min_size: int = Field(default=64, ge=8, le=16384)
    max_size: int = Field(default=1024, ge=8, le=16384)
    max_n: int = Field(default=4, ge=1, le=10)
    max_steps: int = Field(default=50, ge=1, le=500)
    max_prompt_chars: int = Field(default=2000, ge=1, le=32000)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> GenerationLimits:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize ({self.min_size}) must not exceed maxSize ({self.max_size})")
        return self


class StylePreset(_CamelModel):
    """A named prompt template, chosen by the request's ``style``; ``{prompt}`` is the user's prompt."""

    prompt: str = "{prompt}"
    negative_prompt: str | None = None
