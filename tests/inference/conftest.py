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


@pytest.fixture(scope="session")
def tiny_extras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``sd``: the tiny SD model with LoRAs ``style-a`` and ``style-b`` and component overrides, written by
    the CLI (adapters/, components/); ``checked``: the same with a bundled checker that flags everything;
    ``flag-none``: a checker directory (as CompVis' is laid out) that flags nothing."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from kubediffusion.tinymodel import build_tiny_safety_checker, write_tiny_pipeline
    from kubediffusion.tinymodel import main as tiny_main

    root = tmp_path_factory.mktemp("tiny-extras")
    argv = [str(root / "sd"), "--lora", "style-a", "--lora", "style-b", "--vae-override", "--unet-override"]
    assert tiny_main(argv) == 0
    write_tiny_pipeline(root / "checked", "sd", safety_checker="flag-all")
    checker, processor = build_tiny_safety_checker("flag-none")
    checker.save_pretrained(str(root / "flag-none"))
    processor.save_pretrained(str(root / "flag-none"))
    return {"sd": root / "sd", "checked": root / "checked", "flag-none": root / "flag-none"}
