"""values.schema.json: strict (unknown keys and wrong types fail `helm template`), and in step with
values.yaml (every key typed, every key commented)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.unit.chart.helm_cli import CHART_DIR, Helm

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicaCount": 2}, "replicaCount"),  # unknown top-level key (a helm-create habit)
        ({"operator": {"replicas": 2}}, "replicas"),  # the operator is one replica by design
        ({"router": {"rateLimit": {"rpm": 600}}}, "rpm"),  # typo'd nested key
        ({"router": {"service": {"type": "ClusterIP", "port": 80, "nodePort": 30080}}}, "nodePort"),
        ({"operator": {"profiles": {"nvidia-l4": {"gpu": 1}}}}, "gpu"),  # HardwareProfile field typo
        # Not a quantity: every model naming the profile would fail to apply its Deployment.
        ({"operator": {"profiles": {"nvidia-l4": {"cpu": "four"}}}}, "cpu"),
        ({"operator": {"profiles": {"nvidia-l4": {"memory": "24 GB"}}}}, "memory"),
        ({"router": {"replicas": "two"}}, "replicas"),  # wrong type
        ({"router": {"auth": {"enabled": "yes"}}}, "enabled"),
        ({"router": {"rateLimit": {"rps": -1}}}, "rps"),
        ({"operator": {"healthPort": 70000}}, "healthPort"),
        ({"router": {"image": {"tag": "latest"}}}, "tag"),  # never `latest`
        ({"inference": {"image": {"digest": "sha256:nothex"}}}, "digest"),
        ({"router": {"auth": {"apiKeys": ["short"]}}}, "apiKeys"),  # keys must be long enough
        ({"router": {"auth": {"apiKeys": ["kd-0123456789abcdef"], "existingSecret": "keys"}}}, "auth"),
        ({"router": {"cors": {"origins": ["app.example.org"]}}}, "origins"),  # scheme required
        ({"router": {"storage": {"persistence": {"size": "ten gigs"}}}}, "size"),
        ({"watch": {"namespace": "Not_A_Namespace"}}, "namespace"),
        ({"networkPolicy": {"cacheJob": {"egressPorts": [0]}}}, "egressPorts"),  # ([] follows `downloads`)
        ({"networkPolicy": {"cacheJob": {"egressTo": [{}]}}}, "egressTo"),  # an empty peer is every address
        ({"downloads": {"allowHttp": "yes"}}, "allowHttp"),
        ({"downloads": {"allowedNetworks": ["10.20.0.1"]}}, "allowedNetworks"),  # a NetworkPolicy needs the prefix
        ({"downloads": {"allowedNetworks": ["internal"]}}, "allowedNetworks"),
        ({"downloads": {"allowedHosts": ["https://models.example"]}}, "allowedHosts"),  # a host, not a URL
        ({"downloads": {"allowedHost": ["models.example"]}}, "allowedHost"),
        ({"inference": {"allowedImages": ["https://ghcr.io/acme"]}}, "allowedImages"),
        ({"inference": {"allowedImages": ["ghcr.io/a,ghcr.io/b"]}}, "allowedImages"),  # one prefix per item
        ({"router": {"trustedProxies": ["proxy.example.org"]}}, "trustedProxies"),  # addresses, not names
        ({"router": {"trustedProxies": "10.0.0.0/8"}}, "trustedProxies"),  # a list (the chart joins it)
        ({"router": {"forwardedHeader": "x-real-ip"}}, "forwardedHeader"),
        ({"router": {"rateLimit": {"authFailureBurst": 0}}}, "authFailureBurst"),
        ({"router": {"bodyReadTimeout": 0}}, "bodyReadTimeout"),
        ({"router": {"maxUploadBytes": 100}}, "maxUploadBytes"),
        ({"router": {"storeDefault": "yes"}}, "storeDefault"),
        ({"router": {"hold": {"maxRequests": -1}}}, "maxRequests"),
        ({"router": {"hold": {"retryAfter": 5}}}, "retryAfter"),
        ({"router": {"tenants": {"list": [{"name": "a", "keys": ["short"]}]}}}, "keys"),
        ({"router": {"tenants": {"list": [{"name": "a", "keys": ["sha256:abc"]}]}}}, "keys"),  # not a digest
        ({"router": {"tenants": {"list": [{"name": "team a"}]}}}, "name"),  # a Prometheus label value
        ({"router": {"tenants": {"list": [{"name": "a", "rateLimit": {"burst": 5}}]}}}, "rps"),
        (
            {"router": {"tenants": {"list": [{"name": "a", "keys": ["kd-0123456789abcdef"], "quota": {"images": 5}}]}}},
            "images",
        ),
        (
            {"router": {"tenants": {"list": [{"name": "a", "keys": ["kd-0123456789abcdef"]}], "existingSecret": "t"}}},
            "tenants",
        ),
        ({"router": {"logFormat": "logfmt"}}, "logFormat"),
        ({"router": {"tracing": {"otlpEndpoint": "otel-collector:4318"}}}, "otlpEndpoint"),  # a URL
        ({"router": {"usage": {"retentionDays": 0}}}, "retentionDays"),
        ({"router": {"usage": {"shared": "configmap"}}}, "shared"),
        ({"podMonitor": {"enabled": True, "interval": "30"}}, "interval"),
        ({"podMonitor": {"port": "metrics"}}, "port"),
        ({"grafanaDashboard": {"labels": {"grafana_dashboard": None}}}, "labels"),  # the sidecar needs a label
        ({"networkPolicy": {"monitoring": {"from": [{"namespaceSelector": {}}]}}}, "namespaceSelector"),  # every ns
        (
            {"networkPolicy": {"monitoring": {"from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}}},
            "namespaceSelector",
        ),
        ({"networkPolicy": {"monitoring": {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}}}, "ipBlock"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_schema_rejects_unknown_keys_and_wrong_types(helm: Helm, values: dict[str, Any], expected: str) -> None:
    error = helm.template_error(values)
    assert "values don't meet the specifications of the schema" in error, error
    assert expected in error, error


def test_schema_rejects_set_of_wrong_type_on_the_command_line(helm: Helm) -> None:
    error = helm.template_error(set_values=["router.maxBodyBytes=lots"])
    assert "maxBodyBytes" in error


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every object key the schema declares (following local $refs)."""
    if "$ref" in schema:
        target: Any = SCHEMA
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _schema_paths(target, prefix)
    paths: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= _schema_paths(sub, path + ".")
    return paths


def _value_paths(values: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(values, dict):
        for key, sub in values.items():
            if (
                prefix.endswith("profiles.")
                or prefix.endswith("nodeSelector.")
                or prefix.endswith("requests.")
                or prefix.endswith("limits.")
                or prefix.endswith("ipBlock.")
                or prefix.endswith("labels.")
                or prefix.endswith("matchLabels.")
            ):
                continue  # free-form maps
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= _value_paths(sub, path + ".")
    return paths


def test_every_default_value_is_declared_in_the_schema() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    declared = _schema_paths(SCHEMA)
    free_form = ("operator.resources.", "router.resources.", "operator.podSecurityContext.",
                 "operator.securityContext.", "router.podSecurityContext.", "router.securityContext.",
                 "networkPolicy.cacheJob.egressTo", "router.ingress.hosts")  # fmt: skip
    missing = sorted(p for p in _value_paths(values) if p not in declared and not p.startswith(free_form))
    assert missing == []


DATA_KEYS = {"profiles", "podSecurityContext", "securityContext", "resources", "egressTo", "hosts", "from"}


def test_every_key_in_values_yaml_is_camel_case_and_commented() -> None:
    """Each key has a comment line directly above it, except keys inside data blocks (a profile's
    fields, a security context, resources) whose parent key carries the comment."""
    stack: list[tuple[int, str]] = []
    uncommented: list[str] = []
    lines = VALUES_TEXT.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if any(k in DATA_KEYS for k in path[:-1]):
            continue
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"not camelCase: {'.'.join(path)}"
        if not lines[i - 1].strip().startswith("#"):
            uncommented.append(".".join(path))
    assert uncommented == []
