"""The router's one write to the API server: one replica for a model at zero, through its scale subresource.

A GET of ``imagemodels/<name>/scale``, then, while its ``spec.replicas`` is 0, a JSON merge patch
``{"metadata": {"resourceVersion": <as read>}, "spec": {"replicas": 1}}``. The resourceVersion makes the
write a compare-and-swap: a router whose view is a moment old never lowers replicas that someone else
(the autoscaler, another router replica, ``kubectl scale``) has raised in between; that is a 409, and the
:class:`~.wakeup.Waker` reads again. A model without ``spec.replicas`` (``autoscaling`` alone, before the
autoscaler has written any) is at its minReplicas, which is 0 for a model the router wakes, but cannot be
read through ``/scale`` (the API server answers 500: the spec replicas field does not exist): it gets
the patch without a precondition.

RBAC: ``get`` and ``patch`` on ``imagemodels/scale``; the router writes nothing else.
"""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from kubediffusion.router.kube_discovery import ImageModel
from kubediffusion.router.wakeup import WakeError

RETRYABLE_CODES = frozenset({409, 429})  # and every 5xx


class KubeScaler:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def wake(self, namespace: str, name: str) -> bool:
        try:
            precondition = await self._read(namespace, name)
            if precondition is None:
                return False
            patch: dict[str, Any] = {"spec": {"replicas": 1}}
            if precondition:
                patch["metadata"] = {"resourceVersion": precondition}
            await self._client.patch(ImageModel.Scale, name, patch, namespace=namespace, patch_type=PatchType.MERGE)
        except ApiError as exc:
            code = exc.status.code or 0
            raise WakeError(f"{code} {exc.status.message}", retryable=code in RETRYABLE_CODES or code >= 500) from exc
        except (httpx2.HTTPError, httpx.HTTPError) as exc:  # lightkube's transport is httpx2
            raise WakeError(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        return True

    async def _read(self, namespace: str, name: str) -> str | None:
        """The resourceVersion to patch at ("" for none), or None when the model has replicas already."""
        try:
            scale = await self._client.get(ImageModel.Scale, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 500:
                raise
            return ""  # no spec.replicas to read (see the module docstring); a real 500 fails the patch too
        if scale.spec is not None and (scale.spec.replicas or 0) > 0:
            return None
        return (scale.metadata.resourceVersion if scale.metadata is not None else None) or ""
