"""kopf registration only: every handler is parse → build → apply → status via :func:`reconcile`.

One reconcile serves create, update and resume (react to changes at once, in kopf's thread pool), and
in the background (:mod:`~kubediffusion.operator.workqueue`, a few threads of our own): events of the
model's pods, cache Job and Deployment (a crash, a finished download, a rollout that became
available shows in status at once), a poll of a converging model ``poll_seconds`` after its last
reconcile, and a resync of every model each ``resync_seconds`` (a kopf timer; it also corrects drift
and heals a refusal that no longer holds). Waiting is not sleeping: a reconcile that finds the model
still converging asks the queue to look again later, as controller-runtime's ``RequeueAfter`` does.
kopf's retries (``TemporaryError``) gave every model its own polling loop in kopf's thread pool (and
patched the ImageModel on every retry of a change handler): with 50 models converging at once the
polls outnumbered the threads and the creation of new models waited behind them. A refused spec is
``kopf.PermanentError`` for a change handler (no retry storm).

Handlers are sync with lightkube's sync client, whose connection pool has a connection for every
thread that calls it; :class:`~kubediffusion.operator.runs.Runs` keeps two reconciles of one model
from running at once and queues the model again when a request arrived during one, instead of
dropping it. Events are posted by the reconcile itself (``kopf.event`` needs a handler's context,
which the queue's threads have not). The autoscaler is a task of kopf's event loop started at
startup (:mod:`kubediffusion.operator.autoscaler.loop`); it writes ``/scale``, and the update handler
applies the new spec.replicas like any other change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.resource import GROUP, PLURAL, VERSION
from kubediffusion.operator.autoscaler.loop import run_autoscaler
from kubediffusion.operator.kube import Kube, KubeError, new_client
from kubediffusion.operator.reconcile import Outcome, Refused, reconcile
from kubediffusion.operator.runs import Runs
from kubediffusion.operator.settings import OperatorSettings
from kubediffusion.operator.status import Event
from kubediffusion.operator.workqueue import WorkQueue, start_workers

ANNOTATION_PREFIX = GROUP
FINALIZER = "kubediffusion.io/operator"
log = logging.getLogger(__name__)
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={names.FIELD_MANAGER},{names.MODEL_LABEL}"
# Children whose events reconcile their model: (group, version, plural) as kopf names them.
CHILD_RESOURCES = (("", "v1", "pods"), ("batch", "v1", "jobs"), ("apps", "v1", "deployments"))
CHILD_LABELS: dict[str, Any] = {names.MODEL_LABEL: kopf.PRESENT, "app.kubernetes.io/managed-by": names.FIELD_MANAGER}
WORKERS = 16  # kopf's handler threads: change handlers of different models at once
QUEUE_WORKERS = 8  # threads that reconcile models in the background (workqueue.py)
API_CONNECTIONS_BESIDES_WORKERS = 4  # the autoscaler's reads and /scale writes
# A child's event waits this long for the others of the same change (a finished Job: its pod, then the
# Job twice; a rollout: the Deployment, its pods, the Deployment again) to make one reconcile of them.
GATHER_SECONDS = 0.2


def configure_kopf(settings: kopf.OperatorSettings, *, workers: int = WORKERS) -> None:
    """kopf's own settings for this operator (the startup handler applies them)."""
    # Progress and diff-base in annotations: the status schema stays strict (no status.kopf).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    # kopf puts a finalizer on models with timers (to stop the timer before the object goes); name it
    # ours. Deleting an ImageModel while no operator runs waits for it (or remove the finalizer).
    settings.persistence.finalizer = FINALIZER
    # Events: only ours (the reconcile posts them on transitions), not kopf's, one per log line.
    settings.posting.level = logging.CRITICAL
    settings.execution.max_workers = workers
    # No watching of CRDs/namespaces (no RBAC for them): the CRD must exist before the operator starts.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    # Only our children, filtered by the API server (the handlers' labels= filter is client-side).
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = CHILD_SELECTOR


def connect(config: OperatorSettings) -> Kube:
    return Kube(new_client(connections=WORKERS + QUEUE_WORKERS + API_CONNECTIONS_BESIDES_WORKERS))


def register(
    registry: kopf.OperatorRegistry, config: OperatorSettings, connect: Callable[[OperatorSettings], Kube] = connect
) -> None:
    """Register the operator's handlers into ``registry`` (a fresh one per operator instance)."""
    background = WorkQueue()
    runs = Runs(requeue=background.add)
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
        state["kube"] = connect(config)
        start_workers(background, QUEUE_WORKERS, reconcile_in_background)
        if config.autoscale_interval_seconds > 0:
            # A task of kopf's own loop, stopped at cleanup.
            tasks.add(asyncio.create_task(run_autoscaler(state["kube"], config), name="autoscaler"))

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        background.close()  # workers end after the reconcile they are in (daemon threads: exit does not wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    def post(body: Mapping[str, Any], event: Event) -> None:
        try:
            state["kube"].post_event(body, event.type, event.reason, event.message)
        except KubeError as exc:  # the status says it too; an Event is not worth failing the reconcile
            log.warning("could not post the %s Event about %s: %s", event.reason, body["metadata"]["name"], exc)

    def reconciler(namespace: str, name: str) -> Callable[[], Outcome | None]:
        key = f"{namespace}/{name}"

        def run() -> Outcome | None:
            try:
                outcome = reconcile(state["kube"], config, namespace=namespace, name=name, post_event=post)
            except Refused as exc:
                background.forget_later(key)  # nothing changes until someone edits the spec (or the resync)
                raise kopf.PermanentError(str(exc)) from None
            except Exception:
                background.add_after(key, config.poll_seconds)  # an API server error: try again
                raise
            if outcome is not None and outcome.converging:
                background.add_after(key, config.poll_seconds)
            else:
                background.forget_later(key)
            return outcome

        return run

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def on_change(
        *, namespace: str | None, name: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        ns = namespace or ""
        outcome = runs.wait_and_run(f"{ns}/{name}", reconciler(ns, name))
        if outcome is not None:
            logger.info("reconciled: %s %s", outcome.phase, outcome.message)

    def reconcile_in_background(key: str) -> None:
        ns, _, name = key.partition("/")
        # If a change handler is reconciling the model, the model comes back here after it (runs.py). A
        # refused spec has already reported itself; a failed API call is tried again after poll_seconds.
        with contextlib.suppress(kopf.PermanentError, KubeError):
            runs.run_or_defer(key, reconciler(ns, name))

    async def on_child(*, type: str | None, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        # A child changed (a pod ready, crashed or unschedulable, a cache Job finished, a Deployment
        # available): status follows at once instead of at the next poll. A listing (type None: at start,
        # or after a lost watch) is skipped: resume reconciles every model, polls and resyncs the rest.
        if type is not None:
            background.add(f"{namespace or ''}/{labels[names.MODEL_LABEL]}", within=GATHER_SECONDS)

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, labels=CHILD_LABELS, registry=registry)(on_child)

    @kopf.timer(
        GROUP, VERSION, PLURAL, interval=config.resync_seconds, initial_delay=config.resync_seconds, registry=registry
    )
    async def resync(*, namespace: str | None, name: str, **_: Any) -> None:
        # Level-triggered: the whole desired state again, drift corrected, even if nothing was heard of.
        background.add(f"{namespace or ''}/{name}")


def make_registry(
    config: OperatorSettings, connect: Callable[[OperatorSettings], Kube] = connect
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, config, connect)
    return registry
