"""Fixtures for router tests with real inference processes (see stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="needs the inference extra (torch + diffusers)")

from kubediffusion.local import cache_dir, ensure_tiny_model
from tests.router.stack import Stack, start_stack, stop_stack


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure_tiny_model(cache_dir() / "tiny-sd")


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two inference processes behind one router, shared by a module's tests (they only read)."""
    started = start_stack(tiny_model, tmp_path_factory.mktemp("stack"))
    yield started
    stop_stack(started)


@pytest.fixture
def own_stack(tiny_model: Path, tmp_path: Path) -> Iterator[Stack]:
    """A private stack for a test that kills processes."""
    started = start_stack(tiny_model, tmp_path)
    yield started
    stop_stack(started)
