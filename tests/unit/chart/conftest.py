"""Chart tests need only the helm binary (no cluster). A missing binary FAILS them: build it."""

from __future__ import annotations

import pytest

from tests.unit.chart.helm_cli import Helm, HelmMissingError, Manifest, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def default_docs(helm: Helm) -> list[Manifest]:
    """The chart rendered with its default values (release kd, namespace kd-system)."""
    return helm.template()
