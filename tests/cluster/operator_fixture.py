"""Reusable fixtures for tests that need the ImageModel CRD and a running operator.

Use from any test module (tests/cluster, tests/e2e, chart tests)::

    from tests.cluster import operator_fixture

    imagemodel_crd = operator_fixture.imagemodel_crd      # session: CRD applied and Established
    cache_storage = operator_fixture.cache_storage        # session: default StorageClass + provisioner
    operator = operator_fixture.operator                  # per test: `kubediffusion operator` on `namespace`

The e2e pod runner maps the claim directories of this same ``cache_storage`` into the processes it runs.

The operator is the real CLI (``python -m kubediffusion.cli operator``) with ``KUBECONFIG`` pointing
at the test cluster, watching only the test's namespace, polling every second so tests converge fast.
``OperatorProcess`` can be killed (SIGKILL, a crash mid-reconcile) and restarted. Its log is
``<tmp>/operator.log``; :meth:`OperatorProcess.tail` shows its end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.fixtures import Cluster
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "imagemodel.yaml"
CRD_NAME = "imagemodels.kubediffusion.io"
TEST_IMAGE = "kubediffusion/inference:test"
TEST_PROFILES = {
    "nvidia-l4": {"gpus": 1, "gpuResourceName": "nvidia.com/gpu", "nodeSelector": {"nvidia.com/gpu.present": "true"}},
    "cpu": {"gpus": 0},
}


def raw(api: client.ApiClient, method: str, path: str, body: object = None, **kw: Any) -> tuple[int, Any]:
    """A raw API call returning (status, parsed JSON); no exception on non-2xx."""
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        headers["Content-Type"] = kw.pop("content_type", "application/json")
        payload = body  # the REST layer serializes JSON (and apply-patch+yaml) bodies
    query = [(k, str(v)) for k, v in kw.items()]
    request = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query,
        header_params=headers,
        body=payload,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=30)
    data = response.read()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data.decode(errors="replace")


def apply_crd(api: client.ApiClient) -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    status, answer = raw(
        api,
        "PATCH",
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}",
        crd,
        content_type="application/apply-patch+yaml",
        fieldManager="kubediffusion-tests",
        force="true",
    )
    assert status in (200, 201), f"CRD apply failed: {status} {answer}"

    def established() -> bool:
        _, got = raw(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
        conds = {c["type"]: c["status"] for c in (got or {}).get("status", {}).get("conditions", [])}
        return conds.get("Established") == "True" and conds.get("NamesAccepted") == "True"

    wait_for(established, timeout=30, interval=0.2, message="ImageModel CRD Established")
    # Discovery of the new resource can lag behind Established by a moment.
    wait_for(
        lambda: raw(api, "GET", "/apis/kubediffusion.io/v1alpha1/imagemodels")[0] == 200,
        timeout=30,
        interval=0.2,
        message="imagemodels served",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.health_port = _free_port()
        self.env = {
            "KD_OPERATOR_INFERENCE_IMAGE": TEST_IMAGE,
            "KD_OPERATOR_POLL_SECONDS": "1",
            "KD_OPERATOR_RESYNC_SECONDS": "10",
            "KD_OPERATOR_PROFILES": json.dumps(TEST_PROFILES),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        cmd = [sys.executable, "-m", "kubediffusion.cli", "operator", "--health-port", str(self.health_port)]
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1}: {' '.join(cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        log.close()
        self.starts += 1
        wait_for(self.healthy, timeout=60, interval=0.3, message=f"operator /healthz\n{self.tail()}")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited ({self.proc and self.proc.returncode})\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash in the middle of whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def imagemodel_crd(api_client: client.ApiClient) -> str:
    apply_crd(api_client)
    return CRD_NAME


@pytest.fixture(scope="session")
def cache_storage(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A default StorageClass whose claims bind (the control plane has no storage driver)."""
    from tests.support.provisioner import HostPathProvisioner, ensure_storage_class

    root = tmp_path_factory.mktemp("volumes")
    ensure_storage_class(api_client)
    provisioner = HostPathProvisioner(api_client, root).start()
    try:
        yield root
    finally:
        provisioner.stop()


@pytest.fixture
def operator(
    control_plane: Cluster,
    imagemodel_crd: str,
    cache_storage: Path,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """An operator watching only this test's namespace (tests never see each other's operators)."""
    proc = OperatorProcess(
        control_plane.kubeconfig, tmp_path / "operator.log", env={"KD_OPERATOR_NAMESPACE": namespace}
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# --- helpers for tests that drive ImageModels ----------------------------------------------------

IM_PATH = "/apis/kubediffusion.io/v1alpha1/namespaces/{ns}/imagemodels"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def imagemodel(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubediffusion.io/v1alpha1", "kind": "ImageModel", "metadata": {"name": name}, "spec": spec}


def create_model(api: client.ApiClient, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    status, answer = raw(api, "POST", IM_PATH.format(ns=namespace), imagemodel(name, spec))
    assert status == 201, answer
    result: dict[str, Any] = answer
    return result


def get_model(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    status, answer = raw(api, "GET", f"{IM_PATH.format(ns=namespace)}/{name}")
    return answer if status == 200 else None


def patch_model_spec(api: client.ApiClient, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    status, answer = raw(
        api,
        "PATCH",
        f"{IM_PATH.format(ns=namespace)}/{name}",
        {"spec": spec},
        content_type="application/merge-patch+json",
    )
    assert status == 200, answer


def delete_model(api: client.ApiClient, namespace: str, name: str) -> None:
    status, answer = raw(api, "DELETE", f"{IM_PATH.format(ns=namespace)}/{name}")
    assert status in (200, 202), answer


def condition(model: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((model or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_phase(
    api: client.ApiClient, namespace: str, name: str, phase: str, timeout: float = 90, **expected: str
) -> dict[str, Any]:
    """Wait until status.phase == phase (and condition reasons, e.g. CacheReady="Downloaded")."""

    def check() -> dict[str, Any] | None:
        model = get_model(api, namespace, name)
        status = (model or {}).get("status") or {}
        if status.get("phase") != phase:
            return None
        if any(condition(model, t).get("reason") != reason for t, reason in expected.items()):
            return None
        return model

    last = {}

    def check_and_remember() -> dict[str, Any] | None:
        nonlocal last
        last = (get_model(api, namespace, name) or {}).get("status") or {}
        return check()

    try:
        return wait_for(check_and_remember, timeout=timeout, interval=0.3, message=f"{namespace}/{name} {phase}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast status: {json.dumps(last, indent=1)}") from None


def table(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """`kubectl get im` as the API server renders it (printer columns)."""
    request = api.param_serialize(
        method="GET",
        resource_path=IM_PATH.format(ns=namespace),
        header_params={"Accept": TABLE},
        auth_settings=["BearerToken"],
    )
    answer = json.loads(api.call_api(*request, _request_timeout=30).read())
    names = [c["name"] for c in answer["columnDefinitions"]]
    return [dict(zip(names, row["cells"], strict=True)) for row in answer["rows"]]


def list_objects(api: client.ApiClient, path: str, selector: str = "") -> list[dict[str, Any]]:
    status, answer = raw(api, "GET", path, **({"labelSelector": selector} if selector else {}))
    assert status == 200, answer
    items: list[dict[str, Any]] = answer["items"]
    return items
