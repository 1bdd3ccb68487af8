"""A model's LoRA adapters as the router knows them, and a request's choice of them checked early.

The router needs only an adapter's name and default scale (the pods load the weights, see
docs/pipelines.md): from an ImageModel's ``spec.adapters`` (read from the object as sent, so a CRD
without the field, which prunes it, means no adapters) or a static config entry's ``adapters``.

A request's ``adapters: [{name, scale}]`` is checked here by the pod's own rules
(:mod:`kubediffusion.api.pipelines`): a name the model lacks is 404 ``model_not_found`` with param
``adapters``, a name given twice a 400, so neither reaches a pod (scales were checked when the request
was parsed). Where the model's adapters are unknown (a static entry without the list) the pod checks alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from kubediffusion.api.pipelines import ADAPTER_NAME_PATTERN, AdapterRequest, PipelineOptions, Scale, resolve_choice
from kubediffusion.router.routing import Target

log = logging.getLogger(__name__)


class AdapterSpec(BaseModel):
    """The router's part of one adapter; the rest (``source``, ``file``) is the operator's."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    name: Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)]
    default_scale: Scale = 1.0


def adapter_scales(adapters: Sequence[AdapterSpec]) -> dict[str, float]:
    return {adapter.name: adapter.default_scale for adapter in adapters}


def spec_adapters(obj: dict[str, Any], namespace: str, name: str) -> dict[str, float]:
    """An ImageModel's ``spec.adapters`` (plain dicts) -> name -> default scale; an unusable item is
    logged and left out (a request for it is then a 404 here rather than a pod's error)."""
    raw = (obj.get("spec") or {}).get("adapters")
    if raw is None:
        return {}
    if not isinstance(raw, list):
        log.warning("ImageModel %s/%s: spec.adapters is not a list; ignored", namespace, name)
        return {}
    found: dict[str, float] = {}
    for index, item in enumerate(raw):
        try:
            adapter = AdapterSpec.model_validate(item)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"]
            log.warning("ImageModel %s/%s: spec.adapters[%d] ignored: %s", namespace, name, index, why)
            continue
        found.setdefault(adapter.name, adapter.default_scale)
    return found


def check_adapters(target: Target, requested: Sequence[AdapterRequest] | None, model: str | None) -> None:
    """Refuse the adapters a pod of the model would refuse (see the module docstring)."""
    known = target.entry.adapters
    if known is None or not requested:
        return
    options = PipelineOptions(adapters=known)
    resolve_choice(
        options,
        prompt="",  # the router knows no blocked terms; the pod checks them
        adapters=requested,
        scheduler=None,  # nor the model's schedulers
        moderation=None,
        model=model,
        model_adapter=target.adapter,
    )
