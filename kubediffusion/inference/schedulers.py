"""The scheduler: the model's default class with its config overrides, and the classes a request may pick.

Every scheduler is made once at load with ``from_config`` of the pipeline's own saved scheduler config
(its betas, prediction type, timestep offset: what the model was trained with) plus the overrides
(``timestep_spacing: trailing`` for SDXL-Lightning), and cached per class; a batch (its jobs share one
scheduler: the batch key) sets its pipeline's ``scheduler`` to the cached instance. Schedulers keep
per-run state (timesteps, step index), which is safe because one thread runs one batch at a time.

Overrides apply to every class that accepts them (DDIM has no ``use_karras_sigmas``); the default class
must accept all of them, so a misspelt key fails the load instead of being ignored. A class diffusers
does not list as compatible with the pipeline's own is loaded with a warning, not refused: LCM- or
TCD-LoRA adapters need ``LCMScheduler``/``TCDScheduler`` on pipelines that do not list them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

from kubediffusion.api.pipelines import SchedulerConfig
from kubediffusion.inference.backend import ModelLoadError

log = logging.getLogger(__name__)


def scheduler_class(name: str) -> Any:
    diffusers: Any = importlib.import_module("diffusers")
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ModelLoadError(f"scheduler {name!r} is not a diffusers scheduler class")
    return cls


def _accepted(cls: Any) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


class SchedulerSet:
    """The default scheduler and one instance per class a request may name."""

    def __init__(self, default: Any, by_name: dict[str, Any]) -> None:
        self.default = default
        self.by_name = by_name

    @property
    def default_name(self) -> str:
        return type(self.default).__name__

    def get(self, name: str | None) -> Any:
        """The instance for a request's choice (None: the default); KeyError for a class not loaded."""
        return self.default if name is None or name == self.default_name else self.by_name[name]


def configure_schedulers(pipe: Any, config: SchedulerConfig) -> SchedulerSet:
    """Make the default and allowed schedulers (see the module docstring) and set the default on ``pipe``."""
    own = type(pipe.scheduler)
    base = pipe.scheduler.config
    overrides = dict(config.config)
    default_cls = scheduler_class(config.name) if config.name else own
    unknown = sorted(set(overrides) - _accepted(default_cls))
    if unknown:
        raise ModelLoadError(f"scheduler config: {default_cls.__name__} has no setting {', '.join(unknown)}")
    compatible = {cls.__name__ for cls in getattr(pipe.scheduler, "compatibles", ())} | {own.__name__}

    def make(cls: Any) -> Any:
        if cls.__name__ not in compatible:
            log.warning("%s is not listed as compatible with %s; using it as configured", cls.__name__, own.__name__)
        accepted = {key: value for key, value in overrides.items() if key in _accepted(cls)}
        try:
            return cls.from_config(base, **accepted)
        except Exception as exc:
            raise ModelLoadError(f"scheduler {cls.__name__}: {type(exc).__name__}: {exc}") from exc

    default = make(default_cls) if config.name or overrides else pipe.scheduler
    by_name = {name: make(scheduler_class(name)) for name in config.allowed if name != default_cls.__name__}
    pipe.scheduler = default
    log.info(
        "scheduler %s%s%s",
        type(default).__name__,
        f" with {overrides}" if overrides else "",
        f"; a request may pick {', '.join(sorted(by_name))}" if by_name else "",
    )
    return SchedulerSet(default, by_name)
