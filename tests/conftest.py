"""Root conftest: kept small. Makes ``tests.support`` importable however pytest is started.

Cluster fixtures are defined once here, so one session starts one control plane and one volume
provisioner whichever tiers it runs (fixtures are lazy: unit tests never start them). They live in
tests/support/fixtures.py (control plane, client, namespace) and tests/cluster/operator_fixture.py
(CRD, storage, operator).
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.cluster.operator_fixture import cache_storage, imagemodel_crd, operator  # noqa: E402
from tests.support.fixtures import api_client, control_plane, namespace  # noqa: E402

__all__ = ["api_client", "cache_storage", "control_plane", "imagemodel_crd", "namespace", "operator"]
