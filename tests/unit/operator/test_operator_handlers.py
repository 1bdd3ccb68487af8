"""The handlers: login, what they watch, events never dropped, polls that do not repeat an event's reconcile;
and the operator's freedom from the kubernetes package. (Runs itself: test_operator_runs.py.)"""

from __future__ import annotations

import ast
import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from kubediffusion.imagemodel import names
from kubediffusion.operator.handlers import configure_kopf, connect, make_registry
from kubediffusion.operator.settings import OperatorSettings
from tests.unit.operator.fakekube import FakeKube

OPERATOR_DIR = Path(__file__).resolve().parents[3] / "kubediffusion" / "operator"
CONFIG = OperatorSettings(poll_seconds=30, resync_seconds=60, autoscale_interval_seconds=0)
CHILDREN = {"pods": ("", "v1"), "jobs": ("batch", "v1"), "deployments": ("apps", "v1")}


def model() -> dict[str, Any]:
    meta = {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1}
    spec = {"source": {"tiny": {}}, "resources": {"gpus": 0}}
    return {"apiVersion": "kubediffusion.io/v1alpha1", "kind": "ImageModel", "metadata": meta, "spec": spec}


class CountingKube(FakeKube):
    """FakeKube that counts reconciles and can hold one at its last read (the model's pods)."""

    def __init__(self) -> None:
        super().__init__(model())
        self.reconciles = 0
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        self.events: list[str] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reconciles += kind == "ImageModel"
        return super().get(kind, namespace, name)

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        if kind == "Pod" and selector.get(names.COMPONENT_LABEL) == "inference" and self.hold is not None:
            self.holding.set()
            assert self.hold.wait(5), "never released"
            self.hold = None
        return super().list(kind, namespace, selector)

    def post_event(self, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append(reason)

    def phase(self) -> str:
        return str((self.objects[("ImageModel", "m")].get("status") or {}).get("phase"))

    def cached(self) -> None:
        self.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
        self.objects[("Job", "im-m-cache")]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}


class Handlers:
    """The registered handler functions, started against ``kube`` (kopf's own machinery is not run)."""

    def __init__(self, kube: FakeKube, config: OperatorSettings = CONFIG) -> None:
        registry = make_registry(config, connect=lambda _: kube)  # type: ignore[arg-type,return-value]
        activities = {h.activity.value: h.fn for h in registry._activities.get_all_handlers()}
        asyncio.run(activities["startup"](settings=kopf.OperatorSettings(), logger=None))
        self.cleanup = activities["cleanup"]
        self.children = {h.selector.any_name: h.fn for h in registry._watching.get_all_handlers()}
        [self.on_change] = {h.fn for h in registry._changing.get_all_handlers()}
        [timer] = registry._spawning.get_all_handlers()
        self.timer = timer

    def stop(self) -> None:
        asyncio.run(self.cleanup(logger=None))

    def change(self, reason: str) -> object:
        return self.on_change(namespace="ns", name="m", reason=reason, retry=0, logger=logging.getLogger("test"))

    def child_event(self, plural: str, type_: str | None = "MODIFIED") -> None:
        labels = names.labels("m", "cache" if plural == "jobs" else "inference")
        asyncio.run(self.children[plural](type=type_, namespace="ns", labels=labels, logger=None))


@pytest.fixture
def kube() -> CountingKube:
    return CountingKube()


@pytest.fixture
def handlers(kube: CountingKube) -> Iterator[Handlers]:
    started = Handlers(kube)
    yield started
    started.stop()


def until(predicate: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.01)


def test_kopf_watches_the_operators_pods_jobs_and_deployments_server_side(handlers: Handlers) -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings, workers=24)
    assert settings.execution.max_workers == 24
    for plural, (group, version) in CHILDREN.items():
        (selector,) = settings.watching.label_selectors.collect(Resource(group, version, plural))
        wanted = dict(part.split("=") for part in selector.split(",") if "=" in part)
        assert wanted.items() <= names.labels("m", "inference").items() and names.MODEL_LABEL in selector
    assert list(settings.watching.label_selectors.collect(Resource("apps", "v1", "replicasets"))) == []
    assert set(handlers.children) == set(CHILDREN)


def test_an_event_during_a_background_reconcile_reruns_it(kube: CountingKube, handlers: Handlers) -> None:
    handlers.child_event("deployments")
    until(lambda: kube.phase() == "Pending", "the claim is not bound yet")
    kube.hold = threading.Event()
    handlers.child_event("pods")
    assert kube.holding.wait(5), "the reconcile has read the claim (still Pending) and waits"
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    handlers.child_event("jobs")  # returns at once: the model is queued again behind the running reconcile
    kube.hold.set()
    until(lambda: kube.phase() == "Caching", "the rerun saw the bound claim (dropped, the model stays Pending)")


def test_an_event_during_a_change_handlers_reconcile_brings_the_model_back_after_it(
    kube: CountingKube, handlers: Handlers
) -> None:
    kube.hold = threading.Event()
    change = threading.Thread(target=handlers.change, args=("create",))
    change.start()
    assert kube.holding.wait(5)
    kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    handlers.child_event("pods")  # a queue worker finds the model busy: it comes back once the handler is done
    time.sleep(0.1)  # (the worker does not wait for the handler: nothing to see until it is released)
    assert kube.reconciles == 1
    kube.hold.set()
    change.join(5)
    until(lambda: kube.phase() == "Caching", "the model came back and the claim is seen bound")
    assert kube.events == ["Pending", "Caching"] and kube.reconciles == 2, "two runs, one after the other"


def test_the_initial_listing_of_children_reconciles_nothing(kube: CountingKube, handlers: Handlers) -> None:
    handlers.child_event("pods", type_=None)  # resume reconciles every model at startup
    time.sleep(0.1)
    assert kube.reconciles == 0


def test_a_converging_model_is_polled_until_it_settles_without_retrying_the_handler(kube: CountingKube) -> None:
    handlers = Handlers(kube, OperatorSettings(poll_seconds=0.05, autoscale_interval_seconds=0))
    try:
        assert handlers.change("update") is None, "no TemporaryError: kopf's retries would patch the model"
        assert kube.phase() == "Pending"
        polls = kube.reconciles
        until(lambda: kube.reconciles >= polls + 3, "polled every poll_seconds while converging")
        kube.objects[("ImageModel", "m")]["spec"]["replicas"] = 0  # settles: cached, scaled to zero
        kube.cached()
        until(lambda: kube.events[-1:] == ["Pending"] and kube.phase() == "Pending", "settled")
        settled = kube.reconciles
        time.sleep(0.3)
        assert kube.reconciles <= settled + 1, "a settled model is not polled (the resync looks at it)"
    finally:
        handlers.stop()


def test_an_events_reconcile_pushes_the_next_poll_back(kube: CountingKube, handlers: Handlers) -> None:
    handlers.change("create")  # Pending: a poll is due in poll_seconds (30)
    time.sleep(0.2)
    handlers.child_event("pods")
    until(lambda: kube.reconciles == 2, "the event's reconcile")
    time.sleep(0.1)
    assert kube.reconciles == 2


def test_the_resync_reconciles_every_model_through_the_queue(kube: CountingKube, handlers: Handlers) -> None:
    assert handlers.timer.interval == CONFIG.resync_seconds
    assert handlers.timer.initial_delay == CONFIG.resync_seconds, "change handlers reconcile at start"
    asyncio.run(handlers.timer.fn(namespace="ns", name="m", logger=None))
    until(lambda: kube.reconciles == 1, "reconciled in the background")
    kube.objects[("ImageModel", "m")]["spec"]["source"] = {"url": "http://example.com/m.tar.gz"}  # refused
    asyncio.run(handlers.timer.fn(namespace="ns", name="m", logger=None))
    until(lambda: kube.phase() == "Failed", "a refusal reported by the resync")


def test_login_uses_kopfs_own_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: team}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: secret}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    registry = make_registry(OperatorSettings())
    [handler] = [h for h in registry._activities.get_all_handlers() if h.activity.value == "authentication"]
    info = handler.fn(settings=kopf.OperatorSettings(), logger=None)
    assert info.server == "https://127.0.0.1:6443" and info.token == "secret" and info.default_namespace == "team"


def test_the_api_client_keeps_a_connection_open_for_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    pool = connect(OperatorSettings()).client._client._client._transport._pool  # lightkube -> httpx2 -> httpcore
    assert settings.execution.max_workers is not None
    assert min(pool._max_connections, pool._max_keepalive_connections) >= settings.execution.max_workers


def test_the_operator_does_not_import_the_kubernetes_package() -> None:
    # kubernetes is a test-only dependency: the operator talks to the API server through lightkube.
    offenders = []
    for path in sorted(OPERATOR_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            offenders += [f"{path.name}: {m}" for m in modules if m.split(".")[0] == "kubernetes"]
    assert offenders == []
