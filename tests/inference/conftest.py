"""Real-pipeline fixtures: the tiny SD and SDXL models, written once per session (helpers: tinyserve.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from kubediffusion.tinymodel import write_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    models = {}
    for kind in ("sd", "sdxl"):
        write_tiny_pipeline(root / kind, kind)
        models[kind] = root / kind
    yield models
