"""Router settings added after the chart's first cut: client addresses behind proxies, brute-force and
slow-client limits, uploads, stored images, held requests, and the tenants file. Each value reaches the
router as the environment variable its settings class reads, and parses there to what was asked for."""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any

import pytest
import yaml

from kubediffusion.router import tenants
from kubediffusion.router.settings import RouterSettings
from tests.unit.chart.helm_cli import CHART_DIR, CUSTOM_VALUES, Helm, Manifest, by_kind, container_env, one

TENANTS = [
    {"name": "team-a", "keys": ["kd-team-a-0123456789", "sha256:" + "ab" * 32], "models": ["tiny-sd", "sdxl-*"],
     "rateLimit": {"rps": 5, "burst": 10}, "quota": {"imagesPerDay": 1000}},
    {"name": "team-b", "keys": ["sha256:" + "cd" * 32]},
]  # fmt: skip


def router_pod(docs: list[Manifest]) -> Manifest:
    pod: Manifest = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
    return pod


def settings_of(docs: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> RouterSettings:
    for name, value in container_env(router_pod(docs), "router").items():
        monkeypatch.setenv(name, value)
    return RouterSettings()


def test_defaults_reach_the_router_as_its_own_defaults(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    env = container_env(router_pod(helm.template()), "router")
    for name in ("KD_ROUTER_TRUSTED_PROXIES", "KD_ROUTER_FORWARDED_HEADER", "KD_ROUTER_AUTH_FAILURE_BURST",
                 "KD_ROUTER_AUTH_FAILURE_RPS", "KD_ROUTER_BODY_READ_TIMEOUT", "KD_ROUTER_HEADER_READ_TIMEOUT",
                 "KD_ROUTER_MAX_UPLOAD_BYTES", "KD_ROUTER_STORE_DEFAULT", "KD_ROUTER_MAX_HELD_REQUESTS",
                 "KD_ROUTER_HOLD_TIMEOUT_SECONDS", "KD_ROUTER_HOLD_RETRY_AFTER", "KD_ROUTER_LOG_FORMAT",
                 "KD_ROUTER_OTLP_ENDPOINT", "KD_ROUTER_USAGE_RETENTION_DAYS"):  # fmt: skip
        assert name in env, name
        monkeypatch.setenv(name, env[name])
    chart = RouterSettings()
    for name in env:
        monkeypatch.delenv(name, raising=False)
    code = RouterSettings()
    fields = ("trusted_proxies", "forwarded_header", "auth_failure_burst", "auth_failure_rps", "body_read_timeout",
              "header_read_timeout", "max_upload_bytes", "store_default", "max_held_requests",
              "hold_timeout_seconds", "hold_retry_after", "log_format", "otlp_endpoint", "usage_configmap",
              "usage_retention_days", "usage_flush_seconds")  # fmt: skip
    assert {f: getattr(chart, f) for f in fields} == {f: getattr(code, f) for f in fields}
    assert "KD_ROUTER_TENANTS_FILE" not in env and "tenants" not in {v["name"] for v in router_pod(
        helm.template())["volumes"]}  # fmt: skip


def test_custom_values_parse_to_what_was_asked(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(helm.template(CUSTOM_VALUES), monkeypatch)
    assert settings.trusted_proxies == [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "fd00::/8", "192.0.2.10")]
    assert settings.forwarded_header == "forwarded"
    assert settings.auth_failure_burst == 3 and settings.auth_failure_rps == 0.5
    assert settings.body_read_timeout == 12.5 and settings.header_read_timeout == 4
    assert settings.max_upload_bytes == 8388608 and settings.store_default is True
    assert settings.max_held_requests == 8 and settings.hold_timeout_seconds == 120.5
    assert settings.hold_retry_after == 7
    assert settings.log_format == "json" and settings.otlp_endpoint == "http://otel-collector.monitoring:4318"
    assert settings.usage_retention_days == 90 and settings.usage_configmap == "", "in memory unless shared"


def test_large_numbers_are_not_rendered_in_scientific_notation(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    # Helm reads numbers from values files as floats: integer settings go through int64.
    docs = helm.template({"router": {"maxUploadBytes": 104857600, "rateLimit": {"authFailureBurst": 2000000},
                                     "hold": {"maxRequests": 100000, "timeoutSeconds": 3600}}})  # fmt: skip
    env = container_env(router_pod(docs), "router")
    assert env["KD_ROUTER_MAX_UPLOAD_BYTES"] == "104857600" and env["KD_ROUTER_MAX_HELD_REQUESTS"] == "100000"
    settings = settings_of(docs, monkeypatch)
    assert settings.auth_failure_burst == 2000000 and settings.hold_timeout_seconds == 3600


def test_memory_limit_leaves_room_for_concurrent_uploads_at_the_default_size(default_docs: list[Manifest]) -> None:
    """The choice in values.yaml: an upload in flight costs about 3 x its size (body, parsed parts, the form
    re-encoded with the model's defaults); the limit fits 16 at maxUploadBytes beside ~256 MiB for the router."""
    (container,) = router_pod(default_docs)["containers"]
    limit = container["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30}
    limit_bytes = int(limit[:-2]) * units[limit[-2:]]
    upload = int(container_env(router_pod(default_docs), "router")["KD_ROUTER_MAX_UPLOAD_BYTES"])
    assert limit_bytes >= 256 * 2**20 + 16 * 3 * upload, (limit, upload)


def test_shared_usage_is_a_config_map_only_the_router_may_get_and_update(
    helm: Helm, default_docs: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not [d for d in default_docs if d["metadata"]["name"].endswith("-usage")], "in memory by default"
    docs = helm.template({"router": {"usage": {"shared": True, "flushSeconds": 0.5}},
                          "watch": {"namespace": "models"}})  # fmt: skip
    settings = settings_of(docs, monkeypatch)
    config_map = one(docs, "ConfigMap", "-usage")
    assert settings.usage_configmap == config_map["metadata"]["name"] and settings.usage_flush_seconds == 0.5
    # In the router's own namespace, whichever namespace the models are in.
    assert settings.usage_namespace == config_map["metadata"]["namespace"] == "kd-system"
    assert "data" not in config_map, "no data: a helm upgrade must not reset the counts"
    role = one(docs, "Role", "-usage")
    assert role["metadata"]["namespace"] == "kd-system"
    name = config_map["metadata"]["name"]
    rule = {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get", "update"]}
    assert role["rules"] == [rule]
    binding = one(docs, "RoleBinding", "-usage")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    router = router_pod(docs)["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": router, "namespace": "kd-system"}]
    # Without rbac.create the ConfigMap is still made; binding the rule is then yours.
    docs = helm.template({"router": {"usage": {"shared": True}}, "rbac": {"create": False}})
    assert one(docs, "ConfigMap", "-usage") and not by_kind(docs, "Role")


def _tenants_secret(docs: list[Manifest]) -> dict[str, Any]:
    secret = one(docs, "Secret", "-tenants")
    loaded: dict[str, Any] = yaml.safe_load(base64.b64decode(secret["data"]["tenants.yaml"]))
    return loaded


def test_tenants_are_rendered_into_a_secret_mounted_as_the_tenants_file(helm: Helm) -> None:
    docs = helm.template({"router": {"tenants": {"list": TENANTS}}})
    assert _tenants_secret(docs) == {"tenants": TENANTS}, "the file format of the issue: a `tenants:` list"
    pod = router_pod(docs)
    env = container_env(pod, "router")
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    path = env["KD_ROUTER_TENANTS_FILE"]
    directory, _, filename = path.rpartition("/")
    mount = mounts[directory]
    assert mount["readOnly"] is True and "subPath" not in mount, "no subPath: an updated Secret reaches the pod"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == one(docs, "Secret", "-tenants")["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "tenants.yaml", "path": filename}]
    assert volume["secret"]["defaultMode"] == 0o440
    # The API-key file keeps working beside it.
    assert "KD_ROUTER_API_KEYS_FILE" in env and one(docs, "Secret", "-api-keys")


def test_the_rendered_tenants_file_is_one_the_router_accepts(helm: Helm) -> None:
    secret = one(helm.template({"router": {"tenants": {"list": TENANTS}}}), "Secret", "-tenants")
    book = tenants.parse_tenants(base64.b64decode(secret["data"]["tenants.yaml"]).decode())
    assert [t.name for t in book.tenants] == ["team-a", "team-b"] and len(book.keys) == 3
    team_a = book.tenants[0]
    assert team_a.models == ("tiny-sd", "sdxl-*") and team_a.images_per_day == 1000
    assert (team_a.rate_limit.rps, team_a.rate_limit.burst) == (5, 10)


def test_the_schema_of_a_tenant_has_the_fields_of_the_router_file() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())["definitions"]["tenant"]

    def aliases(model: Any) -> set[str]:
        return {field.alias or name for name, field in model.model_fields.items()}

    assert set(schema["properties"]) == aliases(tenants.TenantSpec)
    assert set(schema["properties"]["rateLimit"]["properties"]) == aliases(tenants.RateLimitSpec)
    assert set(schema["properties"]["quota"]["properties"]) == aliases(tenants.QuotaSpec)
    assert schema["properties"]["name"]["pattern"] == tenants.TENANT_NAME


def test_tenants_from_an_existing_secret(helm: Helm) -> None:
    docs = helm.template({"router": {"tenants": {"existingSecret": "team-keys", "existingSecretKey": "t.yaml"}}})
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-tenants")]
    pod = router_pod(docs)
    volume = next(v for v in pod["volumes"] if v["name"] == "tenants")
    assert volume["secret"]["secretName"] == "team-keys"
    assert volume["secret"]["items"] == [{"key": "t.yaml", "path": "tenants.yaml"}]
    assert container_env(pod, "router")["KD_ROUTER_TENANTS_FILE"].endswith("/tenants.yaml")


def test_tenants_without_auth_are_refused(helm: Helm) -> None:
    error = helm.template_error({"router": {"auth": {"enabled": False}, "tenants": {"list": TENANTS}}})
    assert "router.tenants needs router.auth.enabled" in error


def test_the_tenants_file_variable_is_a_router_setting(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = helm.template({"router": {"tenants": {"list": TENANTS}}})
    env = container_env(router_pod(docs), "router")
    fields = set(RouterSettings.model_fields)
    assert all(name.removeprefix("KD_ROUTER_").lower() in fields for name in env), sorted(env)
    settings = settings_of(docs, monkeypatch)
    assert str(settings.tenants_file) == env["KD_ROUTER_TENANTS_FILE"]
