"""kopf registration only: every handler is parse → build → apply → status via :func:`reconcile`.

One reconcile serves create, update and resume (react to changes at once), events of the model's pods
(a crash or a finished cache Job shows in status at once) and a timer (level-triggered resync that also
corrects drift). Waiting is an exception: while a model converges the *timer* raises
``kopf.TemporaryError(delay=poll_seconds)``, so a new model has one polling loop; create/resume handlers
apply once and leave the waiting to it, an update handler follows its own rollout until the timer of a
settled model wakes at the next resync and takes over (see :func:`follows_update`). A refused spec is
``kopf.PermanentError`` (no retry storm); the timer still looks at it every resync, so a refusal that
no longer holds (the operator's settings changed) heals without an edit.

Handlers are sync (kopf runs them in a thread pool) with lightkube's sync client; a per-model lock
keeps the timer and a change handler from reconciling the same model at once. The autoscaler is a
task of kopf's event loop started at startup (:mod:`kubediffusion.operator.autoscaler.loop`); it writes
``/scale``, and the update handler applies the new spec.replicas like any other change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION
from kubediffusion.operator.autoscaler.loop import run_autoscaler
from kubediffusion.operator.kube import Kube, new_client
from kubediffusion.operator.reconcile import Outcome, Refused, reconcile
from kubediffusion.operator.settings import OperatorSettings
from kubediffusion.operator.status import Event

ANNOTATION_PREFIX = GROUP
FINALIZER = "kubediffusion.io/operator"
POD_SELECTOR = f"app.kubernetes.io/managed-by={names.FIELD_MANAGER},{names.MODEL_LABEL}"


class _Entry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # holding or waiting


class Locks:
    """One lock per model, kept only while someone holds or waits for it (models come and go)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def hold(self, key: str, *, block: bool) -> Iterator[bool]:
        """Yields whether the lock was taken (always, when ``block``)."""
        with self._guard:
            entry = self._entries.setdefault(key, _Entry())
            entry.users += 1
        acquired = False
        try:
            acquired = entry.lock.acquire(blocking=block)
            yield acquired
        finally:
            if acquired:
                entry.lock.release()
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[key]


def _post(body: Mapping[str, Any], event: Event) -> None:
    kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def follows_update(outcome: Outcome | None, retry: int, config: OperatorSettings) -> bool:
    """Whether the update handler polls again (raises TemporaryError) after its ``retry``-th attempt.

    On create/resume the timer starts at once and polls; after an update of a settled model it sleeps
    until the next resync, so the update handler follows the rollout itself, but only until then: the
    timer has run by then and polls a converging model itself. Each retry of a change handler is a patch
    of the ImageModel (kopf keeps its progress in annotations), so an endless one (a Degraded model, an
    hour-long download) would churn the object every poll for every watcher.
    """
    if outcome is None or not outcome.converging:
        return False
    return (retry + 1) * config.poll_seconds <= config.resync_seconds


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's own settings for this operator (the startup handler applies them)."""
    # Progress and diff-base in annotations: the status schema stays strict (no status.kopf).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    # kopf puts a finalizer on models with timers (to stop the timer before the object goes); name it
    # ours. Deleting an ImageModel while no operator runs waits for it (or remove the finalizer).
    settings.persistence.finalizer = FINALIZER
    # Events: only ours (kopf.event on transitions), not one per log line ("failed temporarily" polls).
    settings.posting.level = logging.CRITICAL
    settings.execution.max_workers = 16
    # No watching of CRDs/namespaces (no RBAC for them): the CRD must exist before the operator starts.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    # Only our children's pods, filtered by the API server (the handler's labels= filter is client-side).
    settings.watching.label_selectors["pods"] = POD_SELECTOR


def register(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Register the operator's handlers into ``registry`` (a fresh one per operator instance)."""
    locks = Locks()
    state: dict[str, Kube] = {}
    tasks: set[asyncio.Task[None]] = set()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A custom registry gets no default login handler: in-cluster service account, else $KUBECONFIG
        # (kopf's own; login_via_client would need the kubernetes package).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)
        state["kube"] = Kube(new_client())
        if config.autoscale_interval_seconds > 0:
            # A task of kopf's own loop, stopped at cleanup.
            tasks.add(asyncio.create_task(run_autoscaler(state["kube"], config), name="autoscaler"))

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    def run(namespace: str, name: str, *, block: bool) -> Outcome | None:
        with locks.hold(f"{namespace}/{name}", block=block) as held:
            if not held:
                raise kopf.TemporaryError("another reconcile of this model is running", delay=config.poll_seconds)
            try:
                return reconcile(state["kube"], config, namespace=namespace, name=name, post_event=_post)
            except Refused as exc:
                raise kopf.PermanentError(str(exc)) from None

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def on_change(
        *,
        namespace: str | None,
        name: str,
        reason: str,
        retry: int,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **_: Any,
    ) -> None:
        outcome = run(namespace or "", name, block=True)
        if outcome is None:
            return
        logger.info("reconciled: %s %s", outcome.phase, outcome.message)
        if reason == "update" and follows_update(outcome, retry, config):
            raise kopf.TemporaryError(f"{outcome.phase}: {outcome.message}", delay=config.poll_seconds)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={names.MODEL_LABEL: kopf.PRESENT, "app.kubernetes.io/managed-by": names.FIELD_MANAGER},
        registry=registry,
    )
    def on_child_pod(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        # A child pod changed (ready, crashed, unschedulable, finished, gone): status follows at once instead
        # of at the next resync. Best effort: if a reconcile of this model is running, it (or the timer)
        # sees the same pod; a refused spec has already reported itself.
        with contextlib.suppress(kopf.TemporaryError, kopf.PermanentError):
            run(namespace or "", labels[names.MODEL_LABEL], block=False)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=config.resync_seconds, registry=registry)
    def resync(*, namespace: str | None, name: str, **_: Any) -> None:
        outcome = run(namespace or "", name, block=False)
        if outcome is not None and outcome.converging:
            raise kopf.TemporaryError(f"{outcome.phase}: {outcome.message}", delay=config.poll_seconds)


def make_registry(config: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, config)
    return registry
