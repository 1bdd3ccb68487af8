"""The chart's RBAC, asked of the real API server as the chart's ServiceAccounts (impersonation +
SelfSubjectAccessReview): what the operator and router need is allowed, everything else is denied.

The allowed rows are exactly the rules the chart renders (checked both ways), and they are the calls
kubediffusion/operator (kube.py, reconcile.py, the autoscaler, kopf) and kubediffusion/router
(kube_discovery.py: ImageModels and inference Pods; waking a model at zero through its scale
subresource) make. Neither may read a Secret: the kubelet resolves a model's token
Secret for the cache Job's pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client

from tests.support.fixtures import Cluster
from tests.unit.chart.chart_cluster import impersonating_client, install
from tests.unit.chart.helm_cli import Helm, HelmMissingError, by_kind, find_helm

pytestmark = pytest.mark.cluster

OTHER = "<other>"  # stands for a namespace the release does not serve (default)
CLUSTER = ""  # a cluster-wide request (all namespaces, or a cluster-scoped resource)


@dataclass(frozen=True)
class Access:
    verb: str
    group: str
    resource: str  # "resource" or "resource/subresource"
    namespace: str = "<watched>"  # <watched>, OTHER or CLUSTER

    def __str__(self) -> str:
        where = {"<watched>": "in the watched namespace", OTHER: "in another namespace", CLUSTER: "cluster-wide"}
        return f"{self.verb} {self.group or 'core'}/{self.resource} {where[self.namespace]}"


def _rows(verbs: str, group: str, resource: str, namespace: str = "<watched>") -> list[Access]:
    return [Access(v, group, resource, namespace) for v in verbs.split()]


# What each component needs, in the namespace it serves (namespaced install).
OPERATOR_ALLOWED = [
    *_rows("get list watch patch", "kubediffusion.io", "imagemodels"),
    *_rows("patch", "kubediffusion.io", "imagemodels/status"),
    *_rows("patch", "kubediffusion.io", "imagemodels/scale"),  # the autoscaler
    *_rows("update", "kubediffusion.io", "imagemodels/finalizers"),
    *_rows("get create patch", "", "persistentvolumeclaims"),
    *_rows("get create patch", "", "services"),
    *_rows("get create patch", "apps", "deployments"),
    *_rows("get create patch delete", "batch", "jobs"),
    *_rows("list watch", "apps", "deployments"),  # kopf watches the children (operator/handlers.py CHILD_RESOURCES)
    *_rows("list watch", "batch", "jobs"),
    *_rows("list watch", "", "pods"),
    *_rows("create", "", "events"),
]
ROUTER_ALLOWED = [
    *_rows("list watch", "kubediffusion.io", "imagemodels"),
    *_rows("list watch", "", "pods"),
    *_rows("get patch", "kubediffusion.io", "imagemodels/scale"),  # wakes a model at zero replicas
]
# Things neither may do: writes they do not make, reads of other kinds, other namespaces, the cluster.
COMMON_DENIED = [
    *_rows("create update delete deletecollection", "kubediffusion.io", "imagemodels"),
    *_rows("update", "kubediffusion.io", "imagemodels/status"),
    *_rows("update", "kubediffusion.io", "imagemodels/scale"),
    *_rows("patch", "kubediffusion.io", "imagemodels/scale", OTHER),
    *_rows("get list watch", "", "secrets"),
    *_rows("create update patch delete", "", "secrets"),
    *_rows("get list", "", "configmaps"),
    *_rows("create delete", "", "pods"),
    *_rows("create", "", "pods/exec"),
    *_rows("get", "", "pods/log"),
    *_rows("delete", "apps", "deployments"),
    *_rows("create", "apps", "statefulsets"),
    *_rows("create", "apps", "daemonsets"),
    *_rows("create", "batch", "cronjobs"),
    *_rows("delete", "", "services"),
    *_rows("delete", "", "persistentvolumeclaims"),
    *_rows("create", "", "serviceaccounts/token"),
    *_rows("create bind escalate", "rbac.authorization.k8s.io", "roles"),
    *_rows("create", "rbac.authorization.k8s.io", "rolebindings"),
    *_rows("create", "networking.k8s.io", "networkpolicies"),
    *_rows("list get", "kubediffusion.io", "imagemodels", OTHER),
    *_rows("list", "", "pods", OTHER),
    *_rows("get", "", "secrets", OTHER),
    *_rows("create", "batch", "jobs", OTHER),
    *_rows("list", "kubediffusion.io", "imagemodels", CLUSTER),
    *_rows("list", "", "secrets", CLUSTER),
    *_rows("list", "", "nodes", CLUSTER),
    *_rows("list", "", "namespaces", CLUSTER),
    *_rows("create", "", "persistentvolumes", CLUSTER),
    *_rows("create", "rbac.authorization.k8s.io", "clusterrolebindings", CLUSTER),
    *_rows("list", "apiextensions.k8s.io", "customresourcedefinitions", CLUSTER),
    *_rows("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", CLUSTER),
]
OPERATOR_DENIED = [
    *COMMON_DENIED,
    *_rows("get", "kubediffusion.io", "imagemodels/scale"),
    *_rows("list watch", "discovery.k8s.io", "endpointslices"),
]
ROUTER_DENIED = [
    *COMMON_DENIED,
    *[a for a in OPERATOR_ALLOWED if a not in ROUTER_ALLOWED],  # the router reads (and wakes models), no more
    *_rows("list watch", "discovery.k8s.io", "endpointslices"),
    *_rows("get", "", "pods"),
]


@pytest.fixture(scope="module")
def helm(control_plane: Cluster) -> Helm:
    try:
        return Helm(find_helm(), kubeconfig=control_plane.kubeconfig)
    except HelmMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


def _allowed(api: client.ApiClient, access: Access, watched: str) -> bool:
    namespace = {"<watched>": watched, OTHER: "default", CLUSTER: ""}[access.namespace]
    resource, _, subresource = access.resource.partition("/")
    review = client.AuthorizationV1Api(api).create_self_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": access.verb, "group": access.group, "resource": resource, "subresource": subresource,
            "namespace": namespace,
        }},
    })  # fmt: skip
    return bool(review.status.allowed)


def _check(api: client.ApiClient, watched: str, allowed: list[Access], denied: list[Access]) -> list[str]:
    wrong = [f"denied but needed: {a}" for a in allowed if not _allowed(api, a, watched)]
    wrong += [f"allowed but not needed: {a}" for a in denied if _allowed(api, a, watched)]
    return wrong


def _rendered_rules(helm: Helm, values: dict[str, object], component: str) -> set[Access]:
    docs = helm.template(values, release="kd", namespace="ns")
    (role,) = [r for r in by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
               if r["metadata"]["name"] == f"kd-kubediffusion-{component}"]  # fmt: skip
    scope = CLUSTER if role["kind"] == "ClusterRole" else "<watched>"
    return {Access(verb, group, resource, scope)
            for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip


def test_rbac_table_lists_every_rule_the_chart_grants(helm: Helm) -> None:
    assert _rendered_rules(helm, {}, "operator") == set(OPERATOR_ALLOWED)
    assert _rendered_rules(helm, {}, "router") == set(ROUTER_ALLOWED)
    cluster = {"watch": {"allNamespaces": True}}
    assert _rendered_rules(helm, cluster, "operator") == {Access(a.verb, a.group, a.resource, CLUSTER)
                                                          for a in OPERATOR_ALLOWED}  # fmt: skip
    assert _rendered_rules(helm, cluster, "router") == {Access(a.verb, a.group, a.resource, CLUSTER)
                                                        for a in ROUTER_ALLOWED}  # fmt: skip


@pytest.fixture
def namespaced_release(helm: Helm, namespace: str) -> Iterator[str]:
    install(helm, "kd", namespace, {"crds": {"enabled": False}}, wait=False)
    try:
        yield namespace
    finally:
        helm.run("uninstall", "kd", "--namespace", namespace, check=False)


@pytest.mark.parametrize(
    ("component", "allowed", "denied"),
    [("operator", OPERATOR_ALLOWED, OPERATOR_DENIED), ("router", ROUTER_ALLOWED, ROUTER_DENIED)],
)
def test_namespaced_service_accounts_get_exactly_what_the_code_uses(
    control_plane: Cluster, namespaced_release: str, component: str, allowed: list[Access], denied: list[Access]
) -> None:
    user = f"system:serviceaccount:{namespaced_release}:kd-kubediffusion-{component}"
    api = impersonating_client(control_plane.kubeconfig, user)
    try:
        assert _check(api, namespaced_release, allowed, denied) == []
    finally:
        api.close()


@pytest.fixture
def cluster_release(helm: Helm, namespace: str) -> Iterator[tuple[str, str]]:
    """(namespace, fullname): ClusterRoles are cluster-scoped, so each release gets its own names."""
    fullname = f"kd-{namespace[-6:]}"
    install(helm, "kd", namespace, {"crds": {"enabled": False}, "watch": {"allNamespaces": True},
                                    "fullnameOverride": fullname}, wait=False)  # fmt: skip
    try:
        yield namespace, fullname
    finally:
        helm.run("uninstall", "kd", "--namespace", namespace, check=False)


@pytest.mark.parametrize("component", ["operator", "router"])
def test_all_namespaces_mode_grants_the_same_verbs_cluster_wide_and_nothing_more(
    control_plane: Cluster, cluster_release: tuple[str, str], component: str
) -> None:
    namespace, fullname = cluster_release
    user = f"system:serviceaccount:{namespace}:{fullname}-{component}"
    api = impersonating_client(control_plane.kubeconfig, user)
    needed = OPERATOR_ALLOWED if component == "operator" else ROUTER_ALLOWED
    anywhere = [Access(a.verb, a.group, a.resource, ns) for a in needed for ns in ("<watched>", OTHER, CLUSTER)]
    denied = [
        *_rows("list", "", "secrets", CLUSTER),
        *_rows("create update delete", "kubediffusion.io", "imagemodels", CLUSTER),
        *_rows("list", "", "nodes", CLUSTER),
        *_rows("create", "", "pods/exec"),
        *_rows("create", "rbac.authorization.k8s.io", "clusterrolebindings", CLUSTER),
        *_rows("list watch create update delete", "apiextensions.k8s.io", "customresourcedefinitions", CLUSTER),
        *_rows("list watch", "", "namespaces", CLUSTER),
        *_rows("list", "", "configmaps", CLUSTER),
    ]
    try:
        assert _check(api, namespace, anywhere, denied) == []
    finally:
        api.close()


NO_SECRETS = [Access(verb, "", "secrets", ns) for verb in ("get", "list", "watch") for ns in ("<watched>", OTHER)]


@pytest.mark.parametrize("values", [{}, {"watch": {"allNamespaces": True}}], ids=["namespaced", "all-namespaces"])
def test_the_operator_service_account_can_not_read_any_secret(
    helm: Helm, control_plane: Cluster, namespace: str, values: dict[str, object]
) -> None:
    # The operator used to GET a model's token Secret to check that it exists; now the kubelet resolves it
    # for the cache Job's pod and reports a missing one (SecretNotFound). Asked of the API server itself.
    fullname = f"kd-{namespace[-6:]}"
    install(helm, "kd", namespace, {"crds": {"enabled": False}, "fullnameOverride": fullname, **values}, wait=False)
    try:
        api = impersonating_client(control_plane.kubeconfig, f"system:serviceaccount:{namespace}:{fullname}-operator")
        try:
            allowed = [
                str(a) for a in [*NO_SECRETS, Access("list", "", "secrets", CLUSTER)] if _allowed(api, a, namespace)
            ]
            assert allowed == []
            assert _allowed(api, Access("list", "", "pods"), namespace), "the review itself answers (it may list pods)"
        finally:
            api.close()
    finally:
        helm.run("uninstall", "kd", "--namespace", namespace, check=False)
