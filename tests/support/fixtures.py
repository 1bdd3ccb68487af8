"""pytest fixtures for tests that need a cluster (tests/cluster, tests/e2e import them).

- ``control_plane`` (session): starts tests.support.controlplane.ControlPlane once per session, or
  reuses the cluster of ``$KUBEDIFFUSION_TEST_KUBECONFIG`` when set; registers the fake kwok nodes.
  Missing binaries FAIL the tests (never skip): run tools/build-binaries.sh.
- ``api_client`` (session): a kubernetes.client.ApiClient for that cluster.
- ``namespace`` (function): a fresh namespace ``t-<test>-<random>``, deleted afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import ControlPlane, default_bin_dir, missing_binaries
from tests.support.nodes import register_nodes
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    control_plane: ControlPlane | None  # None when reusing $KUBEDIFFUSION_TEST_KUBECONFIG


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = default_bin_dir()
    external = os.environ.get("KUBEDIFFUSION_TEST_KUBECONFIG")
    if external:
        kubeconfig = Path(external)
        register_nodes(kubeconfig)
        yield Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, control_plane=None)
        return
    missing = missing_binaries(bin_dir)
    if missing:
        pytest.fail(
            f"control-plane binaries missing from {bin_dir}: {', '.join(missing)}. "
            "Build them with tools/build-binaries.sh (or set KUBEDIFFUSION_BIN_DIR, or point "
            "KUBEDIFFUSION_TEST_KUBECONFIG at a running cluster).",
            pytrace=False,
        )
    cp = ControlPlane(bin_dir, tmp_path_factory.mktemp("controlplane"))
    cp.start()
    try:
        register_nodes(cp.kubeconfig, pod_cidr=cp.pod_cidr)
        yield Cluster(kubeconfig=cp.kubeconfig, bin_dir=bin_dir, control_plane=cp)
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def api_client(control_plane: Cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield api
    finally:
        api.close()


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")[:40].strip("-")
    return f"t-{slug or 'x'}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = _namespace_name(request.node.name)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubediffusion.io/test": "true"}))
    )
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        interval=0.2,
        message=f"ServiceAccount {name}/default",
    )
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
