"""What one reconcile read of a model's children, as the API server returned them (plain dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubediffusion.operator.problems import Obj


@dataclass(frozen=True)
class Observed:
    """Children as read from the API server (None = absent)."""

    claim: Obj | None = None
    job: Obj | None = None
    job_pods: Sequence[Obj] = ()
    deployment: Obj | None = None
    pods: Sequence[Obj] = ()
