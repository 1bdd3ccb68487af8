"""End-to-end fixtures: the local control plane, plus what makes its pods real enough for traffic.

- ``cache_storage`` (session, tests/conftest.py): default StorageClass + hostPath
  provisioner; the pod runner maps the same directories, so what the cache Job writes is what model
  pods read.
- ``pod_runner`` (session): runs pods scheduled to its node as local processes (tests/e2e/podrunner.py).
- ``e2e_stack`` (module): a namespace, the real operator and the real router (Kubernetes discovery)
  watching it. Tests in one module share it, so models are built once per module. The operator allows
  http downloads from 127.0.0.1 (``DOWNLOADS``), where the tests serve their archives.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import OperatorProcess
from tests.e2e.podrunner import PodRunner
from tests.e2e.stack import E2EStack, RouterProcess
from tests.support.fixtures import Cluster

# The e2e models download archives over plain http from servers on 127.0.0.1: the opt-ins a cluster with
# an internal plain-http mirror would set (the operator and fetch-model refuse both by default).
DOWNLOADS = {"KD_OPERATOR_DOWNLOAD_ALLOW_HTTP": "true", "KD_OPERATOR_DOWNLOAD_ALLOWED_NETWORKS": "127.0.0.1/32"}
# The autoscaler samples every second over a 2 s window, and finds "router replicas" by these labels in the
# stack's namespace (tests/e2e/test_elastic.py runs one as a pod; the e2e router itself is a local process).
ROUTER_POD_LABELS = {"app.kubernetes.io/component": "router", "kubediffusion.io/e2e-router": "true"}


def autoscaler_env(namespace: str) -> dict[str, str]:
    return {
        "KD_OPERATOR_AUTOSCALE_INTERVAL_SECONDS": "1",
        "KD_OPERATOR_AUTOSCALE_WINDOW_SECONDS": "2",
        "KD_OPERATOR_ROUTER_NAMESPACE": namespace,
        "KD_OPERATOR_ROUTER_SELECTOR": ",".join(f"{k}={v}" for k, v in ROUTER_POD_LABELS.items()),
    }


def runner_pod_cidr() -> str:
    """A /16 of 127/8 per test run (by process id), so two runs on one machine never share pod addresses
    (every model pod listens on port 8000 of its own address). 127.10/16 is the fake nodes' range."""
    return os.environ.get("KUBEDIFFUSION_TEST_RUNNER_CIDR") or f"127.{20 + os.getpid() % 200}.0.0/16"


@pytest.fixture(scope="session")
def pod_runner(
    api_client: client.ApiClient, cache_storage: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    runner = PodRunner(api_client, cache_storage, tmp_path_factory.mktemp("pods"), pod_cidr=runner_pod_cidr()).start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def e2e_stack(
    request: pytest.FixtureRequest,
    control_plane: Cluster,
    api_client: client.ApiClient,
    imagemodel_crd: str,
    pod_runner: PodRunner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2EStack]:
    core = client.CoreV1Api(api_client)
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:30]
    ns = f"e2e-{module}-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"kubediffusion.io/test": "true"}}})
    workdir = tmp_path_factory.mktemp(f"e2e-{module}")
    operator = OperatorProcess(
        control_plane.kubeconfig,
        workdir / "operator.log",
        env={"KD_OPERATOR_NAMESPACE": ns, **DOWNLOADS, **autoscaler_env(ns)},
    ).start()
    router_env = getattr(request.module, "ROUTER_ENV", None)  # a test module's own router settings
    router = RouterProcess(control_plane.kubeconfig, ns, workdir, env=router_env).start()
    try:
        yield E2EStack(
            api=api_client, namespace=ns, operator=operator, router=router, runner=pod_runner, workdir=workdir
        )
    finally:
        router.stop()
        operator.stop()
        core.delete_namespace(ns)
