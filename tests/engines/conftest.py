"""Fixtures of the engine tier: a stack per adapter (fake engine, inference, router) shared by a module's
tests, and a venv with the base install only (no torch, no Pillow, no psutil) for the stub (see
:mod:`tests.engines.basevenv`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engines.basevenv import BaseVenv, ensure_base_venv
from tests.engines.stack import ADAPTERS, EngineStack, start_engine_stack, stop_engine_stack


@pytest.fixture(scope="module", params=ADAPTERS)
def engine_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineStack]:
    stack = start_engine_stack(request.param, tmp_path_factory.mktemp(request.param))
    yield stack
    stop_engine_stack(stack)


@pytest.fixture
def stack(engine_stack: EngineStack) -> Iterator[EngineStack]:
    """The module's stack for one test: the fake engine behaves again afterwards, whatever the test did."""
    engine_stack.behaviour.reset()
    yield engine_stack
    engine_stack.behaviour.reset()


@pytest.fixture(scope="session")
def base_venv() -> BaseVenv:
    return ensure_base_venv()
