"""Helpers for tests/cluster/test_chart_*.py: install the chart into the local control plane, act as the
chart's ServiceAccounts, and run the real operator/router processes with the chart's settings.

(Kept next to helm_cli.py so the chart's test helpers live in one place; no cluster is touched on import.)
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.waiting import wait_for
from tests.unit.chart.helm_cli import CHART_DIR, Helm

CRD_NAME = "imagemodels.kubediffusion.io"
# A minimal copy of the Prometheus Operator's PodMonitor CRD (the fields the chart writes).
PODMONITOR_CRD = Path(__file__).parent / "data" / "podmonitor-crd.yaml"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def enforce_restricted(api: client.ApiClient, namespace: str) -> None:
    """Label the namespace so Pod Security admission refuses any pod that is not "restricted"."""
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})


def adopt_crd(api: client.ApiClient, release: str, namespace: str) -> None:
    """Let `release` take over an ImageModel CRD that exists already.

    The CRD is cluster-wide and kept on uninstall, so another test (or an earlier release) may have
    created it; Helm adopts an existing object only when it carries the release's ownership metadata.
    """
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.read_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    ext.patch_custom_resource_definition(
        CRD_NAME,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
            }
        },
    )


def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, service_account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a fresh token of the ServiceAccount (TokenRequest API):
    the same identity the pod would have in the cluster."""
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        service_account, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": service_account, "user": {"token": token.status.token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": service_account, "namespace": namespace}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def impersonating_client(admin_kubeconfig: Path, user: str) -> client.ApiClient:
    """Admin credentials plus `Impersonate-User`: every request is authorized as `user` (for a
    ServiceAccount the API server adds its groups)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(admin_kubeconfig))
    api.set_default_header("Impersonate-User", user)
    return api


def deployment_env(api: client.ApiClient, namespace: str, name: str, container: str) -> dict[str, str]:
    """The literal env of a container of a live Deployment (what the chart installed)."""
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    (c,) = [c for c in deployment.spec.template.spec.containers if c.name == container]
    return {e.name: e.value or "" for e in c.env or []}


def secret_value(api: client.ApiClient, namespace: str, name: str, key: str) -> str:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return base64.b64decode(secret.data[key]).decode()


def install(
    helm: Helm,
    release: str,
    namespace: str,
    values: Mapping[str, Any] | None = None,
    *,
    wait: bool = True,
    upgrade: bool = False,
) -> subprocess.CompletedProcess[str]:
    args = ["upgrade" if upgrade else "install", release, str(CHART_DIR), "--namespace", namespace]
    if wait:
        args += ["--wait", "--timeout", "120s"]
    return helm.run(*args, *helm.values_args(values), timeout=180)


@contextmanager
def running(argv: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a kubediffusion component as a subprocess (own process group), stopped on exit."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KD_", "KUBECONFIG"))}
    full_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubediffusion.cli", *argv],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def create_crd(api: client.ApiClient, path: Path, timeout: float = 60) -> str:
    """Create the CRD in ``path`` (or keep the one there) and wait until it is Established; its name."""
    body = yaml.safe_load(path.read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, timeout=timeout, message=f"CRD {body['metadata']['name']} Established")
    return str(body["metadata"]["name"])


def delete_crd(api: client.ApiClient, name: str, timeout: float = 60) -> None:
    """Delete a CRD (and so its objects) and wait until it is gone."""
    ext = client.ApiextensionsV1Api(api)

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    try:
        ext.delete_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    wait_for(gone, timeout=timeout, message=f"CRD {name} deleted")
