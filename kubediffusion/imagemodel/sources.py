"""Where weights come from: the model's ``spec.source``, and the sources of the extra weights of its
pipeline (``spec.adapters[].source``, ``spec.components.*.source``: huggingface, url or pvc, no tiny).

A source's :meth:`Source.cache_key` names its directory in the cache volume; :mod:`.spec` extends it
with the extra weights the cache Job fetches into that directory (:meth:`ImageModelSpec.weights_key`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from kubediffusion.imagemodel.wire import SecretKeyRef, display_url
from kubediffusion.imagemodel.wire import SpecPart as _Spec

SourceKind = Literal["huggingface", "url", "pvc", "tiny", "none"]


class HuggingFaceSource(_Spec):
    repo: str = Field(min_length=1, max_length=200)
    revision: str = Field(default="main", min_length=1, max_length=255)
    token_secret_ref: SecretKeyRef | None = None


class PvcSource(_Spec):
    claim_name: str = Field(min_length=1, max_length=253)
    path: str = Field(default="", max_length=1024)


class TinySource(_Spec):
    kind: str = Field(default="sd", min_length=1, max_length=32)


class Source(_Spec):
    """Where the diffusers engine's weights come from: exactly one of the four. A model of another engine
    has none (``Source()``, kind ``none``): it reads no weights of ours."""

    huggingface: HuggingFaceSource | None = None
    url: str | None = None
    pvc: PvcSource | None = None
    tiny: TinySource | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> Source:
        chosen = [n for n in ("huggingface", "url", "pvc", "tiny") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"exactly one of huggingface, url, pvc, tiny must be set (got {', '.join(chosen)})")
        return self

    @property
    def kind(self) -> SourceKind:
        if self.huggingface is not None:
            return "huggingface"
        if self.url is not None:
            return "url"
        if self.pvc is not None:
            return "pvc"
        return "tiny" if self.tiny is not None else "none"

    @property
    def needs_fetch(self) -> bool:
        """Whether a cache Job fills a cache volume (every source except an already-populated PVC, and none)."""
        return self.kind in ("huggingface", "url", "tiny")

    def describe(self) -> str:
        """Short human form, shown in the ``Source`` printer column."""
        if self.huggingface is not None:
            return f"hf:{self.huggingface.repo}@{self.huggingface.revision}"
        if self.url is not None:
            shown = display_url(self.url)
            return shown if len(shown) <= 60 else shown[:57] + "..."
        if self.pvc is not None:
            return f"pvc:{self.pvc.claim_name}/{self.pvc.path}".rstrip("/")
        return f"tiny:{self.tiny.kind} (smoke test)" if self.tiny is not None else "none"

    def cache_key(self) -> str:
        """Changes exactly when the cached bytes must change: a new source means a new download."""
        canonical = json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ExtraSource(_Spec):
    """Where an adapter's or a component's weights come from: exactly one of huggingface, url, pvc.

    huggingface and url are fetched by the cache Job into the model's copy; a pvc is mounted read-only
    into the model's pods as it is (nothing is downloaded)."""

    huggingface: HuggingFaceSource | None = None
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    pvc: PvcSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ExtraSource:
        chosen = [n for n in ("huggingface", "url", "pvc") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(f"exactly one of huggingface, url, pvc must be set (got {', '.join(chosen) or 'none'})")
        return self

    @property
    def needs_fetch(self) -> bool:
        return self.pvc is None

    def describe(self) -> str:
        if self.huggingface is not None:
            return f"hf:{self.huggingface.repo}@{self.huggingface.revision}"
        if self.url is not None:
            return display_url(self.url)
        assert self.pvc is not None
        return f"pvc:{self.pvc.claim_name}/{self.pvc.path}".rstrip("/")
