"""examples/*.yaml as tests read them: each ImageModel example, and the other objects its file holds
(examples/comfyui.yaml carries its workflow ConfigMap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def image_model_examples() -> list[Path]:
    """Example files that define an ImageModel (values files and others left out), sorted."""
    return sorted(p for p in EXAMPLES_DIR.glob("*.yaml") if any(d.get("kind") == "ImageModel" for d in documents(p)))


def image_model(path: Path) -> dict[str, Any]:
    """The one ImageModel of an example file."""
    (model,) = [doc for doc in documents(path) if doc.get("kind") == "ImageModel"]
    return model


def companions(path: Path) -> list[dict[str, Any]]:
    """What an example file defines besides its ImageModel (applied with it)."""
    return [doc for doc in documents(path) if doc.get("kind") != "ImageModel"]
