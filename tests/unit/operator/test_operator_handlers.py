"""The handlers' per-model locks, their login, and the operator's freedom from the kubernetes package."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import kopf
import pytest

from kubediffusion.operator.handlers import Locks, make_registry
from kubediffusion.operator.settings import OperatorSettings

OPERATOR_DIR = Path(__file__).resolve().parents[3] / "kubediffusion" / "operator"


def test_a_lock_entry_lives_only_while_someone_holds_or_waits_for_it() -> None:
    locks = Locks()
    for i in range(1000):  # models come and go: the map must not keep one entry per name ever seen
        with locks.hold(f"ns/m{i}", block=True) as held:
            assert held and len(locks) == 1
    assert len(locks) == 0
    with locks.hold("ns/m", block=False) as held:
        assert held
        with locks.hold("ns/m", block=False) as again:
            assert not again, "a second reconcile of the same model does not run at once"
        with locks.hold("ns/other", block=False) as other:
            assert other, "other models are not blocked"
        assert len(locks) == 1
    assert len(locks) == 0


def test_a_waiter_keeps_the_entry_and_gets_the_same_lock() -> None:
    locks = Locks()
    order: list[str] = []
    entered = threading.Event()

    def waiter() -> None:
        entered.set()
        with locks.hold("ns/m", block=True) as held:
            assert held
            order.append("waiter")

    with locks.hold("ns/m", block=True):
        thread = threading.Thread(target=waiter)
        thread.start()
        entered.wait(5)
        for _ in range(100):  # until the waiter is counted as a user of the entry
            if locks._entries["ns/m"].users == 2:
                break
            threading.Event().wait(0.01)
        assert locks._entries["ns/m"].users == 2
        order.append("holder")
    thread.join(5)
    assert order == ["holder", "waiter"] and len(locks) == 0


def test_a_lock_is_released_when_the_reconcile_raises() -> None:
    locks = Locks()
    with pytest.raises(RuntimeError), locks.hold("ns/m", block=True):
        raise RuntimeError("boom")
    with locks.hold("ns/m", block=False) as held:
        assert held
    assert len(locks) == 0


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
