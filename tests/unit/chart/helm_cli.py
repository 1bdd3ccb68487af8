"""Run the real helm binary (built by tools/build-binaries.sh) against charts/kubediffusion.

Shared by tests/unit/chart (lint/template/schema: no cluster) and tests/cluster/test_chart_*.py
(install/upgrade/uninstall). Import it as ``tests.unit.chart.helm_cli``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART_DIR = REPO_ROOT / "charts" / "kubediffusion"
CRD_SOURCE = REPO_ROOT / "crds" / "imagemodel.yaml"
CRD_TEMPLATE = CHART_DIR / "templates" / "crd-imagemodel.yaml"
EXAMPLES_DIR = REPO_ROOT / "examples"

# `helm template` / `helm lint` have no cluster to ask for its version; without this they assume the
# version compiled into helm, which a source build leaves at v1.20 (below the chart's kubeVersion).
KUBE_VERSION = "v1.36.3"

Manifest = dict[str, Any]

# Non-default values touching every switch: used by the render tests and, minus what needs other CRDs
# or namespaces, by the server-side dry run in tests/cluster/test_chart_install.py.
CUSTOM_VALUES: dict[str, Any] = {
    "fullnameOverride": "imaging",
    "commonLabels": {"team": "ml"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watch": {"allNamespaces": True},
    "operator": {"image": {"digest": "sha256:" + "a" * 64}, "resyncSeconds": 30, "extraEnv": [
        {"name": "KD_OPERATOR_POLL_SECONDS", "value": "2"}]},
    "router": {
        "replicas": 3,
        "image": {"tag": "1.2.3"},
        "ingress": {"enabled": True, "className": "nginx",
                    "hosts": [{"host": "img.example.org", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
                    "tls": [{"hosts": ["img.example.org"], "secretName": "img-tls"}]},
        "auth": {"apiKeys": ["kd-0123456789abcdef", "kd-fedcba9876543210"]},
        "rateLimit": {"rps": 2.5, "burst": 5, "globalRps": 0, "globalBurst": 10, "authFailureBurst": 3,
                      "authFailureRps": 0.5},
        "trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.10"],
        "forwardedHeader": "forwarded",
        "bodyReadTimeout": 12.5,
        "headerReadTimeout": 4,
        "cors": {"origins": ["https://app.example.org"]},
        "maxBodyBytes": 2097152,
        "maxUploadBytes": 8388608,
        "storeDefault": True,
        "hold": {"maxRequests": 8, "timeoutSeconds": 120.5, "retryAfterSeconds": 7},
        "logFormat": "json",
        "tracing": {"otlpEndpoint": "http://otel-collector.monitoring:4318"},
        "usage": {"retentionDays": 90},
        "tenants": {"list": [{"name": "team-a", "keys": ["sha256:" + "0" * 64], "models": ["sdxl-*"],
                              "rateLimit": {"rps": 1}, "quota": {"imagesPerDay": 100}}]},
        "urls": {"publicBaseUrl": "https://img.example.org", "ttlSeconds": 600},
        "storage": {"persistence": {"accessMode": "ReadWriteMany", "storageClassName": "nfs", "size": "50Gi"}},
    },
    "inference": {"image": {"repository": "registry.example.org/kd-inference", "tag": "0.1.0-cu124"},
                  "allowedImages": ["registry.example.org/", "ghcr.io/acme/inference"]},
    "downloads": {"allowHttp": True, "allowedNetworks": ["10.20.0.0/16", "fd00:10::/64"],
                  "allowedHosts": ["models.example.org", "*.cdn.example.org"]},
    "networkPolicy": {"extraNamespaces": ["models-a", "models-b"],
                      "extraIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Images"}},
    "crds": {"enabled": False},
}  # fmt: skip

# Scraping of the model pods: a PodMonitor (Prometheus Operator CRD, so kept out of CUSTOM_VALUES, whose
# server-side dry run has no such CRD) and the NetworkPolicy rule that lets its Prometheus in.
MONITORING_VALUES: dict[str, Any] = {
    "podMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s", "labels": {"release": "prom"}},
    "networkPolicy": {"monitoring": {"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
        "podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                                              "values": ["prometheus", "vmagent"]}]},
    }]}},
}  # fmt: skip


class HelmMissingError(RuntimeError):
    pass


def find_helm() -> Path:
    """The helm binary: $KUBEDIFFUSION_BIN_DIR/helm, else the cache's bin/current/helm, else helm-*/helm."""
    candidates: list[Path] = []
    if env := os.environ.get("KUBEDIFFUSION_BIN_DIR"):
        candidates.append(Path(env) / "helm")
    cache = Path(os.environ.get("KUBEDIFFUSION_CACHE") or Path.home() / ".cache" / "kubediffusion")
    candidates.append(cache / "bin" / "current" / "helm")
    candidates.extend(sorted((cache / "bin").glob("helm-*/helm"), reverse=True))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise HelmMissingError(
        "the helm binary was not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "). Build it with tools/build-binaries.sh (it builds helm from source via the Go module proxy)."
    )


class HelmError(RuntimeError):
    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        self.result = result
        self.stderr = result.stderr


class Helm:
    def __init__(self, binary: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        # Removed when the Helm object is garbage-collected (or at interpreter exit).
        self._tmp = tempfile.TemporaryDirectory(prefix="kd-helm-")
        self._home = Path(self._tmp.name)
        self._files = 0

    def env(self) -> dict[str, str]:
        # A private helm home: no user repositories, plugins or caches leak into the tests.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._home),
            "HELM_CACHE_HOME": str(self._home / "cache"),
            "HELM_CONFIG_HOME": str(self._home / "config"),
            "HELM_DATA_HOME": str(self._home / "data"),
        }
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise HelmError(args, result)
        return result

    def values_args(self, values: Mapping[str, Any] | None, set_values: Sequence[str] = ()) -> list[str]:
        args: list[str] = []
        if values:
            self._files += 1
            path = self._home / f"values-{self._files}.yaml"
            path.write_text(yaml.safe_dump(dict(values)))
            args += ["--values", str(path)]
        for item in set_values:
            args += ["--set", item]
        return args

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        set_values: Sequence[str] = (),
        *,
        release: str = "kd",
        namespace: str = "kd-system",
        check: bool = True,
    ) -> list[Manifest]:
        result = self.run(
            "template", release, str(CHART_DIR), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *self.values_args(values, set_values), check=check,
        )  # fmt: skip
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    def template_error(self, values: Mapping[str, Any] | None = None, set_values: Sequence[str] = ()) -> str:
        """Render expecting failure; returns helm's error output (AssertionError if it succeeded)."""
        result = self.run(
            "template", "kd", str(CHART_DIR), "--kube-version", KUBE_VERSION,
            *self.values_args(values, set_values), check=False,
        )  # fmt: skip
        assert result.returncode != 0, f"helm template accepted values {values} {set_values}"
        return result.stderr


def by_kind(docs: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Sequence[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: Sequence[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(name, pod spec) of every workload the chart renders."""
    for doc in docs:
        kind = doc.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield doc["metadata"]["name"], doc["spec"]


def container_env(pod_spec: Manifest, container: str) -> dict[str, str]:
    (c,) = [c for c in pod_spec["containers"] if c["name"] == container]
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def restricted_violations(pod_spec: Manifest) -> list[str]:
    """What the "restricted" Pod Security Standard would reject in a pod spec (the checks of
    k8s.io/pod-security-admission's restricted level, latest version), as readable strings."""
    problems: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(f"{field}=true")
    for vol in pod_spec.get("volumes") or []:
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret", "name"}  # fmt: skip
        if set(vol) - allowed:
            problems.append(f"volume {vol['name']} uses {sorted(set(vol) - allowed)}")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    pod_non_root = psc.get("runAsNonRoot")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser=0")
    containers = [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps.get('add')}")
        if not (sc.get("runAsNonRoot") or (pod_non_root and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser=0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems
