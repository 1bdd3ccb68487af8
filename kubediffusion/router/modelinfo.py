"""Who made a model and which one it is: ``publisher``, ``family`` and ``version`` for ``/v1/models``.

Clients of the services this router replaces read these three fields. They come from explicit values
(a static config entry's ``publisher``/``family``/``version``, an ImageModel's ``spec.info``) where
given, else they are derived from the Hugging Face repo id the weights come from:

* ``publisher`` is the repo's owner: ``stabilityai/sdxl-turbo`` -> ``stabilityai``;
* the repo's name, lower-cased, is split into a family and a version: a well-known long family name
  at its start is abbreviated (:data:`FAMILY_ABBREVIATIONS`: ``stable-diffusion-xl`` -> ``sdxl``), and
  the rest after one ``-`` is the version; otherwise the family is the name up to the first ``-``
  and the version what follows it (None when there is no ``-``).

So ``stabilityai/sdxl-turbo`` is (stabilityai, sdxl, turbo), ``stabilityai/stable-diffusion-xl-base-1.0``
is (stabilityai, sdxl, base-1.0), ``black-forest-labs/FLUX.1-schnell`` is (black-forest-labs, flux.1,
schnell). The tiny smoke-test model is (kubediffusion, tiny, its kind). Anything else (a url or pvc
source with no explicit values) has None for all three.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Longest first: the first prefix that matches wins.
FAMILY_ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-3.5", "sd3.5"),
    ("stable-diffusion-3", "sd3"),
    ("stable-diffusion-2", "sd2"),
    ("stable-diffusion", "sd"),
)


class ModelInfo(BaseModel):
    """The three fields, each None when unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    publisher: str | None = Field(default=None, min_length=1, max_length=200)
    family: str | None = Field(default=None, min_length=1, max_length=200)
    version: str | None = Field(default=None, min_length=1, max_length=200)

    def over(self, derived: ModelInfo) -> ModelInfo:
        """These values where set, ``derived`` elsewhere."""
        return ModelInfo(
            publisher=self.publisher or derived.publisher,
            family=self.family or derived.family,
            version=self.version or derived.version,
        )


def from_repo(repo: str | None) -> ModelInfo:
    """``owner/name`` -> (owner, family, version) as the module docstring says; empty info for None."""
    if not repo:
        return ModelInfo()
    owner, slash, name = repo.strip().strip("/").partition("/")
    if not slash:
        owner, name = "", owner
    name = name.lower()
    family, version = _split_name(name)
    return ModelInfo(publisher=owner or None, family=family or None, version=version or None)


def _split_name(name: str) -> tuple[str, str]:
    for long_name, short in FAMILY_ABBREVIATIONS:
        if name == long_name or name.startswith(long_name + "-"):
            return short, name[len(long_name) + 1 :]
    family, _, version = name.partition("-")
    return family, version


def tiny_info(kind: str) -> ModelInfo:
    return ModelInfo(publisher="kubediffusion", family="tiny", version=kind or None)
