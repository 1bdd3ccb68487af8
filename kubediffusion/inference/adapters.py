"""LoRA adapters: loaded once at start with diffusers' PEFT integration, switched per batch.

Every configured adapter is loaded into the pipeline at start (``load_lora_weights(...,
adapter_name=...)``): its low-rank matrices sit beside the base weights, which stay untouched. A batch
(its jobs share one adapter set: the batch key) then only sets which adapters are active, and at what
scale, with ``set_adapters``, or ``disable_lora`` for the base model: nothing is reloaded or merged, so a
switch costs milliseconds (``bench/bench_adapters.py`` measures it) and the base model is exactly the
base model again (PEFT's disabled layers return the base layer's output itself).

Fused QKV projections (:mod:`.accel`) would bypass the adapters' layers on ``to_q``/``to_k``/``to_v``,
and ``set_adapters`` reaches only the module itself, not a ``torch.compile`` wrapper: so a pipeline with
adapters is neither fused nor has its UNet/transformer compiled (its VAE decoder still is).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kubediffusion.api.pipelines import AdapterConfig
from kubediffusion.inference.backend import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
Selection = tuple[tuple[str, float], ...]


def weight_location(adapter: AdapterConfig) -> tuple[Path, str]:
    """(directory, weight file) of an adapter: ``path`` a .safetensors file; else ``file`` in the directory
    ``path``, else diffusers' default name there, else its only .safetensors file."""
    path = Path(adapter.path)
    where = f"adapter {adapter.name}"
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise ModelLoadError(f"{where}: {path} does not exist")
        return path.parent, path.name
    if not path.is_dir():
        raise ModelLoadError(f"{where}: {path} does not exist (is the cache complete?)")
    if adapter.file is not None:
        if not (path / adapter.file).is_file():
            raise ModelLoadError(f"{where}: {path / adapter.file} does not exist")
        return path, adapter.file
    if (path / DEFAULT_WEIGHT_NAME).is_file():
        return path, DEFAULT_WEIGHT_NAME
    candidates = sorted(child.name for child in path.glob("*.safetensors"))
    if len(candidates) == 1:
        return path, candidates[0]
    found = ", ".join(candidates) if candidates else "none"
    raise ModelLoadError(f"{where}: cannot tell which .safetensors file in {path} to load ({found}); set its file")


class AdapterSwitch:
    """Which adapters are active on one pipeline (shared by the pipelines ``from_pipe`` made of it)."""

    def __init__(self, pipe: Any, names: Sequence[str]) -> None:
        self.pipe = pipe
        self.names = tuple(names)
        self.active: Selection | None = None  # unknown until the first activate()
        self.switches = 0
        self.last_switch_seconds = 0.0

    def activate(self, selection: Selection) -> None:
        """Make ``selection`` (name, scale) the active set; the base model for ``()``. A no-op when it is."""
        if selection == self.active:
            return
        started = time.perf_counter()
        if not selection:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()  # set_adapters alone leaves disabled layers disabled
            self.pipe.set_adapters([name for name, _ in selection], adapter_weights=[scale for _, scale in selection])
        self.active = selection
        self.switches += 1
        self.last_switch_seconds = time.perf_counter() - started


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Loading the second adapter makes diffusers list the first one's keys as 'missing' and peft warn that
    the model holds several adapters (it is meant to), and transformers print a load report per text
    encoder: noise in a server's log. Errors still show."""
    libraries = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        with contextlib.suppress(ImportError):
            libraries.append(importlib.import_module(name))
    levels = [library.get_verbosity() for library in libraries]
    for library in libraries:
        library.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.set_verbosity(level)


def load_adapters(pipe: Any, adapters: Sequence[AdapterConfig]) -> AdapterSwitch | None:
    """Load every adapter into ``pipe`` (base model active afterwards); None when there are none."""
    if not adapters:
        return None
    if importlib.util.find_spec("peft") is None:
        raise ModelLoadError("LoRA adapters need the peft package (pip install 'kubediffusion[inference]')")
    if not hasattr(pipe, "load_lora_weights"):
        raise ModelLoadError(f"{type(pipe).__name__} cannot load LoRA adapters")
    for adapter in adapters:
        directory, weight_name = weight_location(adapter)
        started = time.monotonic()
        try:
            with _quiet_loading():
                pipe.load_lora_weights(str(directory), weight_name=weight_name, adapter_name=adapter.name)
        except Exception as exc:
            raise ModelLoadError(
                f"adapter {adapter.name}: could not load {directory / weight_name}: {type(exc).__name__}: {exc}"
            ) from exc
        loaded = {name for names in pipe.get_list_adapters().values() for name in names}
        if adapter.name not in loaded:
            raise ModelLoadError(
                f"adapter {adapter.name}: none of its weights fit {type(pipe).__name__} (made for another model?)"
            )
        seconds = time.monotonic() - started
        log.info("loaded adapter %s from %s in %.2fs", adapter.name, directory / weight_name, seconds)
    switch = AdapterSwitch(pipe, [adapter.name for adapter in adapters])
    switch.activate(())
    return switch
