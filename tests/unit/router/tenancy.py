"""Shared pieces of the tenancy tests: two tenants and an admin, two models, a settable wall clock."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kubediffusion.router.routing import ModelEntry

A_KEY = "sk-team-a-plain"
A_HASHED_KEY = "sk-team-a-hashed-only"  # the file holds only its digest
A_DIGEST = hashlib.sha256(A_HASHED_KEY.encode()).hexdigest()
B_KEY = "sk-team-b"
ADMIN_KEY = "sk-ops-admin"

TINY = ModelEntry(name="tiny-sd", endpoints=("http://127.0.9.1:8000",), aliases=("dall-e-2",), default=True)
SDXL = ModelEntry(name="sdxl-turbo", endpoints=("http://127.0.9.2:8000",))
MODELS = [TINY, SDXL]

TENANTS = f"""
tenants:
  - name: team-a
    keys: ["{A_KEY}", "sha256:{A_DIGEST}"]
    models: ["tiny-*"]
    quota: {{imagesPerDay: 2}}
  - name: team-b
    keys: ["{B_KEY}"]
    models: ["sdxl-*"]
    rateLimit: {{rps: 1, burst: 2}}
  - name: ops
    keys: ["{ADMIN_KEY}"]
    admin: true
"""

# 2024-05-01T23:00:00Z: an hour before a UTC midnight
LATE_EVENING = 1714604400.0


class WallClock:
    def __init__(self, now: float = LATE_EVENING) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_file(path: Path, text: str, *, stamp: int | None = None) -> Path:
    """Write ``text``; ``stamp`` sets the modification time, so a rewrite is seen whatever the filesystem's
    resolution."""
    path.write_text(text)
    if stamp is not None:
        os.utime(path, (stamp, stamp))
    return path


def tenants_file(tmp_path: Path, text: str = TENANTS) -> Path:
    return write_file(tmp_path / "tenants.yaml", text, stamp=1)
