"""What every part of the ImageModel spec is made of: camelCase models that refuse unknown fields, the
error that names a field, references to keys of Secrets and ConfigMaps, and URLs as status shows them.

:mod:`.spec` and :mod:`.engine` build on these (and :mod:`.spec` re-exports them, so imports from there
keep working).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class InvalidSpecError(ValueError):
    """A spec the CRD schema let through but that cannot be served; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}" if field else message)
        self.field = field


class SpecPart(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(SpecPart):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="token", min_length=1, max_length=253)


class KeyRef(SpecPart):
    """A key of a Secret or ConfigMap in the model's namespace, both named explicitly."""

    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


def display_url(url: str) -> str:
    """``url`` for status and messages: no credentials, query or fragment (a presigned URL's signature)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
