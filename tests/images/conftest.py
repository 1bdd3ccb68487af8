"""The images tier: the container images scripts/test-images.sh built, run with podman the way the
chart and the operator run them.

Skipped unless that script runs it: it builds the images, then calls pytest on this directory with
KUBEDIFFUSION_OPERATOR_IMAGE and KUBEDIFFUSION_INFERENCE_IMAGE set and podman's private configuration
in the environment. A plain `pytest` (the other tiers) reports these tests as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.images.containers import Podman
from tests.unit.chart.helm_cli import Helm, HelmMissingError, Manifest, find_helm


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: container images built and run (scripts/test-images.sh)")


@dataclass(frozen=True)
class Images:
    operator: str
    inference: str

    def repository(self, ref: str) -> str:
        return ref.rsplit(":", 1)[0]


@pytest.fixture(scope="session")
def images() -> Images:
    operator, inference = (os.environ.get(f"KUBEDIFFUSION_{c}_IMAGE", "") for c in ("OPERATOR", "INFERENCE"))
    if not (operator and inference):
        pytest.skip("the images tier runs from scripts/test-images.sh (it builds the images first)")
    return Images(operator=operator, inference=inference)


@pytest.fixture
def podman(images: Images) -> Iterator[Podman]:
    """Containers started through this fixture are removed after the test, pass or fail."""
    runner = Podman()
    try:
        yield runner
    finally:
        runner.remove_all()


@pytest.fixture(scope="session")
def chart_docs(images: Images) -> list[Manifest]:
    """The chart with its default values, only the image repositories pointed at the local builds:
    the tags are the chart's default (its appVersion)."""
    try:
        helm = Helm(find_helm())
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    operator_repository = images.repository(images.operator)
    return helm.template(
        {
            "operator": {"image": {"repository": operator_repository}},
            "router": {"image": {"repository": operator_repository}},
            "inference": {"image": {"repository": images.repository(images.inference)}},
        }
    )
