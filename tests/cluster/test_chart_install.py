"""`helm install` / `upgrade` / `uninstall` of charts/kubediffusion into the local control plane
(real kube-apiserver, controller-manager, scheduler; kwok runs the pods).

Every test namespace enforces the "restricted" Pod Security Standard, so each pod the chart (and the
operator) creates must be admitted by the real Pod Security admission plugin. The operator and router
run here as processes, with the env the chart put in their Deployments and a token of the chart's
ServiceAccounts, so the chart's settings and RBAC are exercised by the real code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.fixtures import Cluster
from tests.support.waiting import wait_for
from tests.unit.chart.chart_cluster import (
    CRD_NAME,
    PODMONITOR_CRD,
    adopt_crd,
    create_crd,
    delete_crd,
    deployment_env,
    enforce_restricted,
    free_port,
    impersonating_client,
    install,
    log_tail,
    running,
    secret_value,
    service_account_kubeconfig,
)
from tests.unit.chart.helm_cli import (
    CHART_DIR,
    CUSTOM_VALUES,
    EXAMPLES_DIR,
    MONITORING_VALUES,
    Helm,
    HelmMissingError,
    find_helm,
)
from tests.unit.chart.model_pod import model_pod
from tests.unit.chart.netpolicy import Endpoint, admitting_rules, ingress_allowed

pytestmark = pytest.mark.cluster

RELEASE = "kd"
# Fast convergence for tests: the operator re-checks converging models every second.
TEST_VALUES: dict[str, Any] = {"operator": {"extraEnv": [{"name": "KD_OPERATOR_POLL_SECONDS", "value": "1"}]}}


@pytest.fixture(scope="module")
def helm(control_plane: Cluster) -> Helm:
    try:
        return Helm(find_helm(), kubeconfig=control_plane.kubeconfig)
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def release_ns(api_client: client.ApiClient, namespace: str, helm: Helm, cache_storage: Path) -> Iterator[str]:
    """A restricted namespace to install into; the release is uninstalled afterwards."""
    enforce_restricted(api_client, namespace)
    adopt_crd(api_client, RELEASE, namespace)
    try:
        yield namespace
    finally:
        helm.run("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "60s", check=False)


def _failed_creates(api_client: client.ApiClient, namespace: str) -> list[str]:
    """FailedCreate events: a controller's pod was refused (e.g. by Pod Security admission)."""
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}" for e in events
            if e.reason == "FailedCreate"]  # fmt: skip


def _rbac_denials(log: Path) -> list[str]:
    """Lines where RBAC refused the ServiceAccount (`... is forbidden: User "system:serviceaccount:..."
    cannot ...`), or kopf noted it lacked permissions.

    kopf lists namespaces and watches CRDs unless ``settings.scanning.disabled``; with the chart's
    namespaced Role those calls are refused, and kopf retries them for about a minute before starting.
    The operator disables scanning, so any such line is a gap between the chart's RBAC and the code.
    (Other 403s, e.g. an Event refused in a namespace being deleted by another test, are not RBAC.)
    """
    return [line[:300] for line in log.read_text(errors="replace").splitlines() if _is_rbac_denial(line)]


def _is_rbac_denial(line: str) -> bool:
    return (
        ("forbidden" in line.lower() and "system:serviceaccount:" in line)  # the API server's RBAC message
        or "API error 403" in line  # the router's discovery loop (it only reads, so a 403 is RBAC)
        or "Not enough permissions" in line  # kopf giving up on an optional call
    )


def _pods(api_client: client.ApiClient, namespace: str, selector: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items)


def _running(pods: list[client.V1Pod]) -> bool:
    return bool(pods) and all(p.status.phase == "Running" for p in pods)


def test_install_serves_the_crd_and_runs_operator_and_router_under_restricted_pod_security(
    api_client: client.ApiClient, helm: Helm, release_ns: str
) -> None:
    started = time.monotonic()
    result = install(helm, RELEASE, release_ns, TEST_VALUES)

    crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    assert {c.type: c.status for c in crd.status.conditions}.get("Established") == "True"
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    # The CRD is served: an ImageModel list in the namespace answers.
    client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "kubediffusion.io", "v1alpha1", release_ns, "imagemodels"
    )

    apps = client.AppsV1Api(api_client)
    for name in (f"{RELEASE}-kubediffusion-operator", f"{RELEASE}-kubediffusion-router"):
        deployment = apps.read_namespaced_deployment(name, release_ns)
        assert deployment.status.available_replicas == 1, name
    # The ReplicaSets' pods were admitted under "restricted" and kwok runs them.
    for component in ("operator", "router"):
        pods = wait_for(
            lambda c=component: (
                (p := _pods(api_client, release_ns, f"app.kubernetes.io/component={c}")) and _running(p) and p
            ),
            timeout=60,
            message=f"{component} pod Running",
        )
        assert len(pods) == 1
    for rs in apps.list_namespaced_replica_set(release_ns).items:
        assert not [c for c in rs.status.conditions or [] if c.type == "ReplicaFailure"], rs.metadata.name
    assert _failed_creates(api_client, release_ns) == []

    claim = client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(
        f"{RELEASE}-kubediffusion-router-storage", release_ns
    )
    assert claim.status.phase == "Bound"
    # NOTES.txt says how to read the generated key, and that command's secret holds one key.
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl get secret -n {release_ns} {RELEASE}-kubediffusion-router-api-keys" in notes
    key = secret_value(api_client, release_ns, f"{RELEASE}-kubediffusion-router-api-keys", "api-keys")
    assert key.startswith("kd-") and len(key) == 43
    print(f"helm install --wait took {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("all_namespaces", [False, True], ids=["role", "cluster-role"])
def test_tiny_example_becomes_ready_through_the_charts_operator_and_is_routed(
    api_client: client.ApiClient,
    helm: Helm,
    release_ns: str,
    control_plane: Cluster,
    tmp_path: Path,
    all_namespaces: bool,
) -> None:
    install(helm, RELEASE, release_ns, {**TEST_VALUES, "watch": {"allNamespaces": all_namespaces}})
    custom = client.CustomObjectsApi(api_client)

    # The operator: the chart's env, the chart's ServiceAccount identity, a local health port.
    operator_env = deployment_env(api_client, release_ns, f"{RELEASE}-kubediffusion-operator", "operator")
    operator_env["KD_OPERATOR_HEALTH_PORT"] = str(free_port())
    operator_env["KUBECONFIG"] = str(service_account_kubeconfig(
        api_client, control_plane.kubeconfig, release_ns, f"{RELEASE}-kubediffusion-operator",
        tmp_path / "operator.kubeconfig"))  # fmt: skip
    # The router likewise; its Secrets are the ones the chart generated, as files.
    router_env = deployment_env(api_client, release_ns, f"{RELEASE}-kubediffusion-router", "router")
    api_key = secret_value(api_client, release_ns, f"{RELEASE}-kubediffusion-router-api-keys", "api-keys")
    (tmp_path / "api-keys").write_text(api_key)
    (tmp_path / "signing-key").write_text(
        secret_value(api_client, release_ns, f"{RELEASE}-kubediffusion-router-signing-key", "signing-key")
    )
    router_port = free_port()
    router_env.update({
        "KD_ROUTER_HOST": "127.0.0.1",
        "KD_ROUTER_PORT": str(router_port),
        "KD_ROUTER_API_KEYS_FILE": str(tmp_path / "api-keys"),
        "KD_ROUTER_SIGNING_KEY_FILE": str(tmp_path / "signing-key"),
        "KD_ROUTER_STORAGE_DIR": str(tmp_path / "images"),
        "KD_ROUTER_KUBECONFIG": str(service_account_kubeconfig(
            api_client, control_plane.kubeconfig, release_ns, f"{RELEASE}-kubediffusion-router",
            tmp_path / "router.kubeconfig")),
    })  # fmt: skip

    model = yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text())
    operator_log, router_log = tmp_path / "operator.log", tmp_path / "router.log"
    with running(["operator"], operator_env, operator_log) as operator, \
            running(["router"], router_env, router_log) as router:  # fmt: skip
        custom.create_namespaced_custom_object("kubediffusion.io", "v1alpha1", release_ns, "imagemodels", model)

        def ready() -> dict[str, Any] | None:
            assert operator.poll() is None, f"operator exited:\n{log_tail(operator_log)}"
            obj = custom.get_namespaced_custom_object(
                "kubediffusion.io", "v1alpha1", release_ns, "imagemodels", "tiny-cpu"
            )
            status: dict[str, Any] = obj.get("status") or {}
            return status if status.get("phase") == "Ready" else None

        try:
            status = wait_for(ready, timeout=120, interval=0.5, message="ImageModel tiny-cpu Ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log_tail(operator_log)}") from None
        assert status["endpoint"] == f"http://im-tiny-cpu.{release_ns}.svc:8000"

        # Model and cache pods were admitted under "restricted" too.
        assert _pods(api_client, release_ns, "kubediffusion.io/model=tiny-cpu,app.kubernetes.io/component=inference")
        assert _pods(api_client, release_ns, "kubediffusion.io/model=tiny-cpu,app.kubernetes.io/component=cache")
        assert _failed_creates(api_client, release_ns) == []

        # The router (chart env + router ServiceAccount) discovers the model and checks the chart's key.
        base = f"http://127.0.0.1:{router_port}"

        def routed() -> list[str] | None:
            assert router.poll() is None, f"router exited:\n{log_tail(router_log)}"
            if httpx.get(f"{base}/readyz", timeout=2).status_code != 200:
                return None
            answer = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=2)
            ids = [m["id"] for m in answer.json()["data"]]
            return ids if "tiny-cpu" in ids else None

        try:
            wait_for(routed, timeout=60, interval=0.5, message="router lists tiny-cpu")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrouter log:\n{log_tail(router_log)}") from None
        assert httpx.get(f"{base}/v1/models", timeout=2).status_code == 401
        assert _rbac_denials(router_log) == [], "the router hit RBAC denials"

        # Delete while the operator runs (kopf's finalizer needs it), then stop.
        custom.delete_namespaced_custom_object("kubediffusion.io", "v1alpha1", release_ns, "imagemodels", "tiny-cpu")

        def gone() -> bool:
            try:
                custom.get_namespaced_custom_object(
                    "kubediffusion.io", "v1alpha1", release_ns, "imagemodels", "tiny-cpu"
                )
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, timeout=60, message="ImageModel tiny-cpu deleted")
    assert _rbac_denials(operator_log) == [], (
        "the operator hit RBAC denials (namespaces/CRDs: kopf scanning, see _rbac_denials)"
    )


def test_upgrade_keeps_generated_secrets_and_uninstall_keeps_the_crd(
    api_client: client.ApiClient, helm: Helm, release_ns: str
) -> None:
    install(helm, RELEASE, release_ns, TEST_VALUES)
    keys_name, signing_name = f"{RELEASE}-kubediffusion-router-api-keys", f"{RELEASE}-kubediffusion-router-signing-key"
    api_key = secret_value(api_client, release_ns, keys_name, "api-keys")
    signing_key = secret_value(api_client, release_ns, signing_name, "signing-key")

    upgraded = {**TEST_VALUES, "router": {"replicas": 2, "rateLimit": {"rps": 3, "burst": 6}}}
    install(helm, RELEASE, release_ns, upgraded, upgrade=True)
    assert secret_value(api_client, release_ns, keys_name, "api-keys") == api_key
    assert secret_value(api_client, release_ns, signing_name, "signing-key") == signing_key
    env = deployment_env(api_client, release_ns, f"{RELEASE}-kubediffusion-router", "router")
    assert env["KD_ROUTER_RATE_LIMIT_RPS"] == "3" and env["KD_ROUTER_RATE_LIMIT_BURST"] == "6"
    router = client.AppsV1Api(api_client).read_namespaced_deployment(f"{RELEASE}-kubediffusion-router", release_ns)
    assert router.status.ready_replicas == 2
    history = helm.run("history", RELEASE, "--namespace", release_ns, "--output", "yaml")
    assert [r["status"] for r in yaml.safe_load(history.stdout)] == ["superseded", "deployed"]

    helm.run("uninstall", RELEASE, "--namespace", release_ns, "--wait", "--timeout", "60s")
    apps = client.AppsV1Api(api_client)
    assert apps.list_namespaced_deployment(release_ns).items == []
    assert [s.metadata.name for s in client.CoreV1Api(api_client).list_namespaced_secret(release_ns).items
            if s.metadata.name.startswith(RELEASE)] == []  # fmt: skip
    # The CRD (and so every ImageModel) survives the uninstall.
    crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.deletion_timestamp is None


def test_non_default_values_pass_server_side_validation(helm: Helm, release_ns: str) -> None:
    """Every object of a heavily customised install is accepted by the real API server (dry run)."""
    values = {**CUSTOM_VALUES, "serviceMonitor": {"enabled": False}}  # no Prometheus Operator CRDs here
    values["networkPolicy"] = {**CUSTOM_VALUES["networkPolicy"], "extraNamespaces": []}
    result = helm.run(
        "install", RELEASE, str(CHART_DIR), "--namespace", release_ns, "--dry-run=server",
        *helm.values_args(values),
    )  # fmt: skip
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout.split("MANIFEST:", 1)[1].split("NOTES:")[0])
             if doc}  # fmt: skip
    assert {"Ingress", "ClusterRole", "ClusterRoleBinding", "NetworkPolicy", "Deployment"} <= kinds


# Model pods scraped by Prometheus (issue 16): the PodMonitor needs the Prometheus Operator's CRD, which this
# control plane does not have unless a test installs its minimal copy (tests/unit/chart/data).
SCRAPED_VALUES: dict[str, Any] = {
    **TEST_VALUES,
    **MONITORING_VALUES,
    "crds": {"enabled": False},  # the ImageModel CRD is not what these tests are about
    "grafanaDashboard": {"enabled": True},
}


@pytest.fixture
def podmonitor_crd(api_client: client.ApiClient) -> Iterator[str]:
    name = create_crd(api_client, PODMONITOR_CRD)
    try:
        yield name
    finally:
        delete_crd(api_client, name)


def _fresh_helm(control_plane: Cluster) -> Helm:
    """A helm with an empty discovery cache: the set of CRDs changes between these tests."""
    return Helm(find_helm(), kubeconfig=control_plane.kubeconfig)


def test_pod_monitor_and_scraper_policy_install_and_read_back_as_rendered(
    api_client: client.ApiClient, control_plane: Cluster, release_ns: str, podmonitor_crd: str
) -> None:
    helm = _fresh_helm(control_plane)
    rendered = helm.template(SCRAPED_VALUES, release=RELEASE, namespace=release_ns)
    install(helm, RELEASE, release_ns, SCRAPED_VALUES, wait=False)
    try:
        # The PodMonitor comes back as rendered: nothing pruned by the CRD's schema (a misspelt field
        # would be), nothing refused by its patterns.
        (want,) = [d for d in rendered if d["kind"] == "PodMonitor"]
        got = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", release_ns, "podmonitors", want["metadata"]["name"]
        )
        assert got["spec"] == want["spec"]
        assert got["spec"]["namespaceSelector"] == {"matchNames": [release_ns]}

        # The NetworkPolicy as the API server stored it (defaults filled in) admits Prometheus of the
        # monitoring namespace on the metrics port, and no one else there or elsewhere.
        networking = client.NetworkingV1Api(api_client)
        policies = [api_client.sanitize_for_serialization(p)
                    for p in networking.list_namespaced_network_policy(release_ns).items]  # fmt: skip
        assert len(policies) == 5  # ingress, serving egress, engine egress, cache Job and perNode egress
        target = Endpoint.of(model_pod(release_ns), {"metadata": {"labels": {
            "kubernetes.io/metadata.name": release_ns}}})  # fmt: skip

        def scraper(namespace: str, name: str) -> Endpoint:
            return Endpoint(namespace, {"kubernetes.io/metadata.name": namespace}, {"app.kubernetes.io/name": name})

        ingress = f"{RELEASE}-kubediffusion-inference-ingress"
        assert admitting_rules(policies, scraper("observability", "vmagent"), target, 8000) == [(ingress, 1)]
        assert not ingress_allowed(policies, scraper("observability", "vmagent"), target, 9090)
        assert not ingress_allowed(policies, scraper("monitoring", "prometheus"), target, 8000)
        assert not ingress_allowed(policies, scraper("observability", "grafana"), target, 8000)

        dashboard = client.CoreV1Api(api_client).read_namespaced_config_map(
            f"{RELEASE}-kubediffusion-dashboard", release_ns
        )
        assert dashboard.metadata.labels["grafana_dashboard"] == "1"
        assert json.loads(dashboard.data["kubediffusion.json"])["uid"] == "kubediffusion"
    finally:
        helm.run("uninstall", RELEASE, "--namespace", release_ns, "--wait", "--timeout", "60s", check=False)
    # Uninstalled with the release (the CRD's own objects go with it too).
    assert client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "monitoring.coreos.com", "v1", release_ns, "podmonitors")["items"] == []  # fmt: skip


def test_pod_monitor_without_the_prometheus_operator_crds_is_refused_before_anything_is_created(
    api_client: client.ApiClient, control_plane: Cluster, release_ns: str
) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    assert not [c for c in ext.list_custom_resource_definition().items
                if c.spec.group == "monitoring.coreos.com"], "this test needs a cluster without them"  # fmt: skip
    helm = _fresh_helm(control_plane)
    result = helm.run(
        "install", RELEASE, str(CHART_DIR), "--namespace", release_ns, *helm.values_args(SCRAPED_VALUES),
        check=False, timeout=180,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'no matches for kind "PodMonitor" in version "monitoring.coreos.com/v1"' in result.stderr, result.stderr
    assert "ensure CRDs are installed first" in result.stderr
    # Helm checks every kind before it creates anything: no half-installed release is left behind.
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    assert apps.list_namespaced_deployment(release_ns).items == []
    assert [s.metadata.name for s in core.list_namespaced_secret(release_ns).items
            if s.metadata.name.startswith(RELEASE)] == []  # fmt: skip
    assert client.NetworkingV1Api(api_client).list_namespaced_network_policy(release_ns).items == []
    # The same values without the PodMonitor install.
    install(helm, RELEASE, release_ns, {**SCRAPED_VALUES, "podMonitor": {"enabled": False}}, wait=False)


def test_shared_usage_config_map_is_the_routers_to_update_and_survives_upgrades(
    api_client: client.ApiClient, helm: Helm, control_plane: Cluster, release_ns: str
) -> None:
    tenants = {"list": [{"name": "team-a", "keys": ["sha256:" + "1" * 64], "quota": {"imagesPerDay": 10}}]}
    values: dict[str, Any] = {**TEST_VALUES, "router": {"replicas": 2, "tenants": tenants}}
    notes = install(helm, RELEASE, release_ns, values, wait=False).stdout.split("NOTES:", 1)[1]
    assert "a tenant may use up\nto 2 x its quota a day" in notes, notes

    values["router"]["usage"] = {"shared": True}
    notes = install(helm, RELEASE, release_ns, values, wait=False, upgrade=True).stdout.split("NOTES:", 1)[1]
    assert "x its quota" not in notes
    name = f"{RELEASE}-kubediffusion-router-usage"
    env = deployment_env(api_client, release_ns, f"{RELEASE}-kubediffusion-router", "router")
    assert (env["KD_ROUTER_USAGE_CONFIGMAP"], env["KD_ROUTER_USAGE_NAMESPACE"]) == (name, release_ns)

    # The router's ServiceAccount reads and replaces that ConfigMap (kube_ledger.py: GET, then PUT with
    # the resourceVersion it read), and may touch no other.
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(f"{RELEASE}-kubediffusion-router", release_ns)
    account = deployment.spec.template.spec.service_account_name
    router = impersonating_client(control_plane.kubeconfig, f"system:serviceaccount:{release_ns}:{account}")
    try:
        core = client.CoreV1Api(router)
        found = core.read_namespaced_config_map(name, release_ns)
        found.data = {"2026-01-01": '{"team-a": {"tiny": {"images": 3}}}'}
        core.replace_namespaced_config_map(name, release_ns, found)
        for forbidden in (
            lambda: core.read_namespaced_config_map("kube-root-ca.crt", release_ns),  # exists everywhere
            lambda: core.list_namespaced_config_map(release_ns),
            lambda: core.create_namespaced_config_map(release_ns, {"metadata": {"name": "other"}}),
        ):
            with pytest.raises(ApiException) as refused:
                forbidden()
            assert refused.value.status == 403
    finally:
        router.close()

    # An upgrade leaves the counts alone (the chart's ConfigMap has no data to apply).
    values["router"]["rateLimit"] = {"rps": 3}
    install(helm, RELEASE, release_ns, values, wait=False, upgrade=True)
    data = client.CoreV1Api(api_client).read_namespaced_config_map(name, release_ns).data
    assert data == {"2026-01-01": '{"team-a": {"tiny": {"images": 3}}}'}
