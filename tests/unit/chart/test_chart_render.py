"""`helm lint` and `helm template` of charts/kubediffusion with default and non-default values; the
rendered YAML is parsed and checked against what the operator and router code actually read."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from kubediffusion.fetch import policy as fetch_policy
from kubediffusion.imagemodel import names as operator_names
from kubediffusion.operator.policy import DownloadPolicy
from kubediffusion.operator.settings import OperatorSettings
from kubediffusion.router.settings import RouterSettings
from tests.unit.chart.helm_cli import (
    CHART_DIR,
    CUSTOM_VALUES,
    KUBE_VERSION,
    Helm,
    Manifest,
    by_kind,
    container_env,
    one,
    pod_specs,
    restricted_violations,
)

NON_DEFAULT = CUSTOM_VALUES


@pytest.fixture(scope="module")
def custom_docs(helm: Helm) -> list[Manifest]:
    return helm.template(NON_DEFAULT)


def test_helm_lint_is_clean_with_default_and_custom_values(helm: Helm) -> None:
    for args in ([], helm.values_args(NON_DEFAULT)):
        result = helm.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART_DIR), *args, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_default_install_is_namespace_scoped_with_roles_not_cluster_roles(default_docs: list[Manifest]) -> None:
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == sorted([
        "CustomResourceDefinition", "ServiceAccount", "ServiceAccount", "Role", "Role", "RoleBinding",
        "RoleBinding", "Deployment", "Deployment", "Service", "Secret", "Secret", "PersistentVolumeClaim",
        "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
    ])  # fmt: skip
    for doc in default_docs:
        if doc["kind"] != "CustomResourceDefinition":
            assert doc["metadata"]["namespace"] == "kd-system", doc["metadata"]["name"]
    for binding in by_kind(default_docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount" and subject["namespace"] == "kd-system"


def test_all_namespaces_switches_to_cluster_roles_and_empty_watch_namespace(custom_docs: list[Manifest]) -> None:
    assert not by_kind(custom_docs, "Role") and not by_kind(custom_docs, "RoleBinding")
    roles = {r["metadata"]["name"] for r in by_kind(custom_docs, "ClusterRole")}
    assert roles == {"imaging-operator", "imaging-router"}
    for binding in by_kind(custom_docs, "ClusterRoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": binding["metadata"]["name"],
        }
        assert "namespace" not in binding["metadata"]
    operator_env = container_env(one(custom_docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    router_env = container_env(one(custom_docs, "Deployment", "-router")["spec"]["template"]["spec"], "router")
    assert operator_env["KD_OPERATOR_NAMESPACE"] == "" and router_env["KD_ROUTER_NAMESPACE"] == ""


def test_watch_namespace_puts_the_roles_and_policies_there(helm: Helm) -> None:
    docs = helm.template({"watch": {"namespace": "models"}})

    def main(kind: str) -> list[Manifest]:
        return [d for d in by_kind(docs, kind) if not d["metadata"]["name"].endswith("-routers")]

    for kind in ("Role", "RoleBinding", "NetworkPolicy"):
        assert {d["metadata"]["namespace"] for d in main(kind)} == {"models"}, kind
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "kd-system"
    # The routers stay in the release namespace: the operator may list their pods there, and only that.
    routers = one(docs, "Role", "-operator-routers")
    assert routers["metadata"]["namespace"] == "kd-system"
    assert routers["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert one(docs, "RoleBinding", "-operator-routers")["roleRef"]["name"] == routers["metadata"]["name"]
    assert not [d for d in helm.template({}) if d["metadata"]["name"].endswith("-routers")], "not when they share one"
    env = container_env(one(docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    assert env["KD_OPERATOR_NAMESPACE"] == "models"


def test_operator_is_one_replica_recreated_with_liveness_on_healthz(default_docs: list[Manifest]) -> None:
    deployment = one(default_docs, "Deployment", "-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kubediffusion"] and container["args"] == ["operator"]
    probe = container["livenessProbe"]["httpGet"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}[probe["port"]]
    assert probe["path"] == "/healthz"
    assert container_env(deployment["spec"]["template"]["spec"], "operator")["KD_OPERATOR_HEALTH_PORT"] == str(port)


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "custom"])
def test_operator_env_is_exactly_what_its_settings_read(
    helm: Helm, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = helm.template(values)
    env = container_env(one(docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    fields = set(OperatorSettings.model_fields)
    for name in env:
        assert name.startswith("KD_OPERATOR_") and name.removeprefix("KD_OPERATOR_").lower() in fields, name
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()  # the chart's env parses with the operator's own settings class
    assert set(settings.profiles) == {"nvidia-l4", "nvidia-a10g", "nvidia-h100", "cpu-small"}
    assert settings.profiles["cpu-small"].gpus == 0
    assert settings.health_port == 8081
    if values:
        assert settings.namespace == "" and settings.resync_seconds == 30
        assert settings.inference_image == "registry.example.org/kd-inference:0.1.0-cu124"
        assert settings.allowed_images == ["registry.example.org/", "ghcr.io/acme/inference"]
        assert settings.download == DownloadPolicy(
            allow_http=True,
            allowed_networks=("10.20.0.0/16", "fd00:10::/64"),
            allowed_hosts=("models.example.org", "*.cdn.example.org"),
        )
    else:
        assert settings.namespace == "kd-system" and settings.resync_seconds == 60
        assert settings.inference_image == "ghcr.io/kubediffusion/kubediffusion-inference:0.1.0"
        assert settings.allowed_images == [] and settings.download == DownloadPolicy(), "https only, any image"
    # The autoscaler finds the router pods by the chart's own selector labels, in the release namespace.
    router = one(docs, "Deployment", "-router")
    assert settings.router_namespace == router["metadata"]["namespace"]
    assert (
        settings.router_labels
        and settings.router_labels.items() <= router["spec"]["template"]["metadata"]["labels"].items()
    )
    assert settings.router_labels == router["spec"]["selector"]["matchLabels"]
    assert settings.autoscale_interval_seconds == 5 and settings.metrics_concurrency == 16


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "custom"])
def test_router_env_is_exactly_what_its_settings_read(
    helm: Helm, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = helm.template(values)
    pod = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
    env = container_env(pod, "router")
    fields = set(RouterSettings.model_fields)
    for name in env:
        assert name.startswith("KD_ROUTER_") and name.removeprefix("KD_ROUTER_").lower() in fields, name
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = RouterSettings()
    assert settings.port == 8080 and settings.discovery == "kubernetes"
    # Files named in env are where the chart mounts them.
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (settings.api_keys_file, settings.signing_key_file):
        assert path is not None
        volume = volumes[mounts[str(path.parent)]]
        assert [item["path"] for item in volume["secret"]["items"]] == [path.name]
    assert mounts[str(settings.storage_dir)] == "storage"
    if values:
        assert settings.namespace == "" and settings.rate_limit_rps == 2.5 and settings.rate_limit_burst == 5
        assert settings.global_rate_limit_rps == 0 and settings.cors_origins == ["https://app.example.org"]
        assert settings.max_body_bytes == 2097152 and settings.url_ttl_seconds == 600
        assert settings.public_base_url == "https://img.example.org"
    else:
        assert settings.namespace == "kd-system" and settings.rate_limit_rps == 10 and settings.rate_limit_burst == 25
        assert settings.cors_origins == [] and settings.public_base_url == ""


def test_ingress_is_off_by_default_and_routes_to_the_router_service_when_on(
    default_docs: list[Manifest], custom_docs: list[Manifest]
) -> None:
    assert not by_kind(default_docs, "Ingress")
    ingress = one(custom_docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["img.example.org"], "secretName": "img-tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "img.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = one(custom_docs, "Service", "-router")
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}


def test_selectors_carry_no_versions_and_match_their_pods(default_docs: list[Manifest]) -> None:
    for deployment in by_kind(default_docs, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(selector)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
    service = one(default_docs, "Service", "-router")
    router = one(default_docs, "Deployment", "-router")
    assert service["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "custom"])
def test_images_are_pinned_never_latest(helm: Helm, values: dict[str, Any]) -> None:
    docs = helm.template(values)
    images = [c["image"] for _, pod in pod_specs(docs) for c in pod["containers"]]
    operator_env = container_env(one(docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    images += [operator_env["KD_OPERATOR_INFERENCE_IMAGE"], operator_env["KD_OPERATOR_ADAPTER_IMAGE"]]
    assert len(images) == 4
    for image in images:
        name, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (name and tag and tag != "latest" and "/" not in tag), image
    if values:
        assert one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "ghcr.io/kubediffusion/kubediffusion@sha256:" + "a" * 64)  # fmt: skip


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "custom"])
def test_every_pod_passes_the_restricted_pod_security_standard(helm: Helm, values: dict[str, Any]) -> None:
    docs = helm.template(values)
    pods = list(pod_specs(docs))
    assert len(pods) == 2
    for name, pod in pods:
        assert restricted_violations(pod) == [], name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["requests"], name
        assert pod["securityContext"]["runAsUser"] != 0


def test_network_policies_let_only_the_router_reach_model_pods(default_docs: list[Manifest]) -> None:
    inference_pod = operator_names.labels("m", "inference")
    cache_pod = operator_names.labels("m", "cache")

    def selects(policy: Manifest, labels: dict[str, str]) -> bool:
        return bool(policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items())

    ingress = one(default_docs, "NetworkPolicy", "-inference-ingress")
    assert selects(ingress, inference_pod) and selects(ingress, cache_pod)
    assert ingress["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = ingress["spec"]["ingress"]
    peer, scraper = rule["from"]  # the router, and the operator's autoscaler reading /metrics
    router_labels = one(default_docs, "Deployment", "-router")["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kd-system"}}
    assert rule["ports"] == [{"protocol": "TCP", "port": operator_names.PORT}]
    operator_labels = one(default_docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    assert not peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert scraper["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert not scraper["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert scraper["namespaceSelector"] == peer["namespaceSelector"]

    serving = one(default_docs, "NetworkPolicy", "-inference-egress")
    assert selects(serving, inference_pod) and not selects(serving, cache_pod)
    assert [p["port"] for rule in serving["spec"]["egress"] for p in rule["ports"]] == [53, 53]
    assert all("to" not in rule for rule in serving["spec"]["egress"])

    cache = one(default_docs, "NetworkPolicy", "-cache-job-egress")
    assert selects(cache, cache_pod) and not selects(cache, inference_pod)
    ports = sorted(p["port"] for rule in cache["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443], "https only by default"

    # A perNode model pod downloads in its init container: it gets the cache Jobs' egress, other model pods do not.
    per_node_pod = {**inference_pod, operator_names.DOWNLOADS_LABEL: "true"}
    downloads = one(default_docs, "NetworkPolicy", "-per-node-download-egress")
    assert selects(downloads, per_node_pod) and not selects(downloads, inference_pod)
    assert not selects(downloads, cache_pod)
    assert downloads["spec"]["egress"] == cache["spec"]["egress"]


def _download_egress(docs: list[Manifest]) -> tuple[list[dict[str, Any]], list[int]]:
    """(peers, TCP ports) of the download rule (the one that is not DNS) of cache Jobs and perNode pods."""
    policies = [
        p
        for p in by_kind(docs, "NetworkPolicy")
        if p["metadata"]["name"].endswith(("-cache-job-egress", "-per-node-download-egress"))
    ]
    same = all(p["spec"]["egress"] == policies[0]["spec"]["egress"] for p in policies)
    assert policies and same, "the same in every model namespace, for cache Jobs and perNode pods alike"
    dns, download = policies[0]["spec"]["egress"]
    assert "to" not in dns and sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    assert {p["protocol"] for p in download["ports"]} == {"TCP"}
    return download["to"], sorted(p["port"] for p in download["ports"])


def test_cache_job_egress_follows_the_download_policy_of_fetch_model(
    default_docs: list[Manifest], custom_docs: list[Manifest]
) -> None:
    # The network refuses what fetch-model refuses: every internal range of its download policy is an
    # `except` of "everywhere" (and nothing else is), so neither can drift from the other.
    peers, ports = _download_egress(default_docs)
    assert ports == [443]
    assert [p["ipBlock"]["cidr"] for p in peers] == ["0.0.0.0/0", "::/0"]
    excepted = {ipaddress.ip_network(c) for p in peers for c in p["ipBlock"]["except"]}
    assert excepted == {network for _, networks in fetch_policy.BLOCKED for network in networks}
    for address in ("169.254.169.254", "10.0.0.1", "127.0.0.1", "100.64.0.1", "fd00::1", "fe80::1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in network for network in excepted), address
    # downloads.allowHttp opens 80 as well; downloads.allowedNetworks are reachable through the except.
    peers, ports = _download_egress(custom_docs)
    assert ports == [80, 443]
    assert [p["ipBlock"] for p in peers[2:]] == [{"cidr": "10.20.0.0/16"}, {"cidr": "fd00:10::/64"}]


def test_cache_job_egress_can_be_replaced(helm: Helm) -> None:
    mirror = [{"ipBlock": {"cidr": "10.30.0.0/16"}}]
    docs = helm.template({"networkPolicy": {"cacheJob": {"egressTo": mirror, "egressPorts": [8080]}}})
    assert _download_egress(docs) == (mirror, [8080])


def test_network_policies_follow_extra_namespaces_and_can_be_disabled(helm: Helm, custom_docs: list[Manifest]) -> None:
    namespaces = sorted({p["metadata"]["namespace"] for p in by_kind(custom_docs, "NetworkPolicy")})
    assert namespaces == ["kd-system", "models-a", "models-b"]
    extra = one([p for p in by_kind(custom_docs, "NetworkPolicy") if p["metadata"]["namespace"] == "models-a"],
                "NetworkPolicy", "-inference-ingress")  # fmt: skip
    assert {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}} in extra["spec"]["ingress"][0]["from"]
    assert not by_kind(helm.template({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_service_monitor_and_crd_toggle(default_docs: list[Manifest], custom_docs: list[Manifest]) -> None:
    assert not by_kind(default_docs, "ServiceMonitor")
    monitor = one(custom_docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert one(default_docs, "CustomResourceDefinition")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"}  # fmt: skip
    assert not by_kind(custom_docs, "CustomResourceDefinition")


def test_api_key_secret_is_generated_given_or_external(helm: Helm, custom_docs: list[Manifest]) -> None:
    import base64

    def keys(docs: list[Manifest]) -> list[str]:
        secret = one(docs, "Secret", "-api-keys")
        return base64.b64decode(secret["data"]["api-keys"]).decode().splitlines()

    generated = keys(helm.template())
    assert len(generated) == 1 and generated[0].startswith("kd-") and len(generated[0]) == 43
    assert keys(custom_docs) == ["kd-0123456789abcdef", "kd-fedcba9876543210"]

    external = helm.template({"router": {"auth": {"existingSecret": "my-keys", "existingSecretKey": "keys.txt"}}})
    assert not [s for s in by_kind(external, "Secret") if s["metadata"]["name"].endswith("-api-keys")]
    pod = one(external, "Deployment", "-router")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "my-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "api-keys"}]

    open_router = helm.template({"router": {"auth": {"enabled": False}}})
    pod = one(open_router, "Deployment", "-router")["spec"]["template"]["spec"]
    assert "KD_ROUTER_API_KEYS_FILE" not in container_env(pod, "router")
    assert "api-keys" not in {v["name"] for v in pod["volumes"]}
    assert not [s for s in by_kind(open_router, "Secret") if s["metadata"]["name"].endswith("-api-keys")]


def test_router_storage_is_a_claim_by_default_or_an_empty_dir(helm: Helm, custom_docs: list[Manifest]) -> None:
    claim = one(custom_docs, "PersistentVolumeClaim")
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs",
                             "resources": {"requests": {"storage": "50Gi"}}}  # fmt: skip
    # ReadWriteMany: ordinary surging rollouts; ReadWriteOnce (default): no surge pod that could not attach.
    assert "strategy" not in one(custom_docs, "Deployment", "-router")["spec"]
    rolling = one(helm.template(), "Deployment", "-router")["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 0, "maxUnavailable": 1}
    docs = helm.template({"router": {"storage": {"persistence": {"enabled": False}}}})
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert "strategy" not in one(docs, "Deployment", "-router")["spec"]
    pod = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
    storage = next(v for v in pod["volumes"] if v["name"] == "storage")
    assert "emptyDir" in storage
    docs = helm.template({"router": {"storage": {"persistence": {"existingClaim": "shared-images"}}}})
    assert not by_kind(docs, "PersistentVolumeClaim")
    pod = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
    storage = next(v for v in pod["volumes"] if v["name"] == "storage")
    assert storage["persistentVolumeClaim"] == {"claimName": "shared-images"}


def test_profiles_in_values_are_valid_operator_hardware_profiles(default_docs: list[Manifest]) -> None:
    from kubediffusion.imagemodel.spec import HardwareProfile

    env = container_env(one(default_docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    for name, profile in json.loads(env["KD_OPERATOR_PROFILES"]).items():
        assert HardwareProfile.model_validate(profile).gpus >= 0, name


@pytest.mark.parametrize(
    ("values", "absent"),
    [
        ({"operator": {"enabled": False}}, "kd-kubediffusion-operator"),
        ({"router": {"enabled": False}}, "kd-kubediffusion-router"),
        ({"rbac": {"create": False}}, None),
        ({"operator": {"serviceAccount": {"create": False, "name": "ops"}},
          "router": {"serviceAccount": {"create": False, "name": "gw"}}}, None),
    ],
    ids=["no-operator", "no-router", "no-rbac", "own-service-accounts"],
)  # fmt: skip
def test_components_and_rbac_can_be_switched_off(helm: Helm, values: dict[str, Any], absent: str | None) -> None:
    docs = helm.template(values)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    if absent is not None:
        assert not [n for n in names if n[1].startswith(absent)]
    if values.get("rbac") == {"create": False}:
        assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    if "serviceAccount" in values.get("operator", {}):
        assert not by_kind(docs, "ServiceAccount")
        binding = one(docs, "RoleBinding", "-operator")
        assert binding["subjects"][0]["name"] == "ops"
        pod = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "gw"


def test_the_operators_own_default_images_are_the_charts(default_docs: list[Manifest]) -> None:
    """Run without the chart (kubediffusion operator on a laptop), the operator names the same images."""
    from kubediffusion.operator.settings import OperatorSettings

    env = container_env(one(default_docs, "Deployment", "-operator")["spec"]["template"]["spec"], "operator")
    defaults = OperatorSettings()
    assert env["KD_OPERATOR_INFERENCE_IMAGE"] == defaults.inference_image
    assert env["KD_OPERATOR_ADAPTER_IMAGE"] == defaults.adapter_image
