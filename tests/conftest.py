"""Root conftest: kept small. Makes ``tests.support`` importable however pytest is started.

Cluster fixtures live in tests/support/fixtures.py and are imported by tests/cluster/conftest.py
and tests/e2e/conftest.py, so unit tests never touch them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
