"""The reconcile's pure parts: the status patch it sends and when its handlers keep polling."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from kubediffusion.imagemodel import names
from kubediffusion.operator import status as st
from kubediffusion.operator.handlers import configure_kopf, follows_update
from kubediffusion.operator.reconcile import APPLY_REJECTED, Outcome, status_patch
from kubediffusion.operator.settings import OperatorSettings


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it to the status subresource."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def test_status_patch_removes_cache_fields_of_the_previous_source() -> None:
    previous = {
        "phase": "Ready",
        "cache": {"claimName": "im-m-cache", "path": "/models/model", "key": "k1", "revision": "abc", "bytes": 7},
        "lastFailure": {"reason": "DownloadFailed", "message": "x", "exitCode": 2, "time": "t"},
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "Old", "status": "True"}],
    }
    new = {
        "phase": "Caching",
        "cache": {"claimName": "im-m-cache", "path": "/models/model", "key": "k2"},
        "lastFailure": {"reason": "DownloadFailed", "message": "y", "exitCode": None, "time": "u"},
        "conditions": [{"type": "Ready", "status": "False"}],
    }
    patched = merge(previous, status_patch(previous, new))
    assert patched["cache"] == {"claimName": "im-m-cache", "path": "/models/model", "key": "k2"}
    assert patched["lastFailure"] == {"reason": "DownloadFailed", "message": "y", "time": "u"}
    assert patched == merge({}, new)


def test_status_patch_removes_a_whole_field_that_is_gone() -> None:
    previous = {"cache": {"claimName": "c", "revision": "r"}, "phase": "Ready"}
    assert merge(previous, status_patch(previous, {"phase": "Failed", "cache": None})) == {"phase": "Failed"}


def test_a_model_scaled_to_zero_or_refused_by_the_api_server_is_settled_not_converging() -> None:
    # Converging models are polled every poll_seconds (timer) forever: only while something can change.
    assert not Outcome("Pending", "spec.replicas is 0", st.SCALED_TO_ZERO).converging
    assert not Outcome("Degraded", "0/1 pods ready", APPLY_REJECTED).converging
    assert Outcome("Degraded", "back-off", st.IMAGE_PULL_BACK_OFF).converging
    assert Outcome("Pending", "creating the cache Job", st.CACHE_PENDING).converging
    assert Outcome("Loading", "0/1 pods ready", st.STARTING).converging
    assert not Outcome("Ready", "1/1 pods ready", st.READY).converging


@pytest.mark.parametrize(("retry", "follows"), [(0, True), (5, True), (11, True), (12, False), (500, False)])
def test_the_update_handler_follows_a_rollout_only_until_the_timer_takes_over(retry: int, follows: bool) -> None:
    # Each retry of a change handler patches kopf's progress annotations on the ImageModel: a model
    # that stays Degraded (or caches for an hour) must not be patched every poll forever.
    config = OperatorSettings(poll_seconds=5, resync_seconds=60)
    loading = Outcome("Degraded", "ImagePullBackOff", st.IMAGE_PULL_BACK_OFF)
    assert follows_update(loading, retry, config) is follows
    assert not follows_update(Outcome("Ready", "", st.READY), 0, config)
    assert not follows_update(None, 0, config)


def test_kopf_watches_only_the_operators_own_pods_server_side() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    (selector,) = settings.watching.label_selectors.collect(Resource("", "v1", "pods"))
    labels = names.labels("m", "inference")
    wanted = dict(part.split("=") for part in selector.split(",") if "=" in part)
    assert wanted.items() <= labels.items() and names.MODEL_LABEL in selector
    imagemodels = Resource("kubediffusion.io", "v1alpha1", "imagemodels", kind="ImageModel")
    assert list(settings.watching.label_selectors.collect(imagemodels)) == []  # every model is watched
    assert settings.scanning.disabled and settings.persistence.finalizer == "kubediffusion.io/operator"
