"""Component overrides: a UNet, transformer or VAE loaded in place of the pipeline's own.

The class is the one the pipeline's ``model_index.json`` names for that component, and the module is
passed to ``from_pretrained``, so the pipeline's own copy is never read. Two forms:

* a diffusers model directory (``config.json`` and weights), e.g. madebyollin/sdxl-vae-fp16-fix;
* a single ``.safetensors`` file holding a diffusers-format state dict (``file``, or ``path`` naming the
  file), e.g. ByteDance/SDXL-Lightning's ``sdxl_lightning_4step_unet.safetensors``. Its architecture is
  ``config.json`` beside it when there is one, else the pipeline's own component's. The module is built
  on the meta device (no random initialisation, no second copy in memory) and the file's tensors are
  assigned to it; every key must match (a checkpoint in the original, non-diffusers layout does not).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubediffusion.api.pipelines import ComponentConfig, ComponentName
from kubediffusion.inference.backend import ModelLoadError

log = logging.getLogger(__name__)


def component_class(index: Mapping[str, Any], name: str, model_dir: Path) -> Any:
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
        raise ModelLoadError(f"components.{name}: the pipeline in {model_dir} has no {name}")
    diffusers: Any = importlib.import_module("diffusers")
    cls = getattr(diffusers, entry[1], None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelLoadError(f"components.{name}: {entry[1]} is not a diffusers model class")
    return cls


def load_components(
    model_dir: Path, index: Mapping[str, Any], components: Mapping[ComponentName, ComponentConfig], dtype: Any
) -> dict[str, Any]:
    """The override modules by component name, in ``dtype``, to pass to ``from_pretrained``."""
    modules: dict[str, Any] = {}
    for name, config in components.items():
        cls = component_class(index, name, model_dir)
        path, file = Path(config.path), config.file
        if path.suffix == ".safetensors":
            path, file = path.parent, path.name
        try:
            modules[name] = (
                _from_directory(cls, name, path, dtype)
                if file is None
                else _from_file(cls, name, path / file, model_dir, dtype)
            )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"components.{name}: could not load {path}: {type(exc).__name__}: {exc}") from exc
        log.info("%s: %s from %s%s", name, cls.__name__, path, f" ({file})" if file else "")
    return modules


def _from_directory(cls: Any, name: str, path: Path, dtype: Any) -> Any:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"components.{name}: {path} is not a diffusers model directory (no config.json)")
    return cls.from_pretrained(str(path), local_files_only=True).to(dtype)


def _from_file(cls: Any, name: str, weights: Path, model_dir: Path, dtype: Any) -> Any:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    if not weights.is_file():
        raise ModelLoadError(f"components.{name}: {weights} does not exist (is the cache complete?)")
    config_dir = weights.parent if (weights.parent / "config.json").is_file() else model_dir / name
    with init_empty_weights():
        module = cls.from_config(cls.load_config(str(config_dir)))
    state = load_file(str(weights))
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[1:3]
        raise ModelLoadError(
            f"components.{name}: {weights} is not a diffusers-format {cls.__name__} state dict ({'; '.join(summary)})"
        ) from None
    return module.to(dtype)
