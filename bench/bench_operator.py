"""Operator latency on the local control plane: apply → all children created → Ready, for 1 and 50 models.

    python bench/bench_operator.py                 # starts its own control plane (tests/support)
    python bench/bench_operator.py --kubeconfig K  # or uses a running one (with the kwok nodes)
    python bench/bench_operator.py --counts 1,10,50 --poll-seconds 1

Every model is the tiny smoke-test model on CPU (kwok runs no containers: the Job "succeeds" and pods
become Ready as soon as they are scheduled), so this measures the operator + API server + controllers,
not downloads or model loading. Each count runs in a fresh namespace; the operator is the real CLI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from kubernetes import client, config  # noqa: E402

from tests.cluster.operator_fixture import (  # noqa: E402
    IM_PATH,
    OperatorProcess,
    apply_crd,
    imagemodel,
    list_objects,
    raw,
)
from tests.support.provisioner import HostPathProvisioner, ensure_storage_class  # noqa: E402

TINY: dict[str, Any] = {
    "source": {"tiny": {}},
    "resources": {"gpus": 0},
    "cache": {"size": "1Gi", "retainOnDelete": False},
}
CHILD_PATHS = {
    "pvc": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "service": "/api/v1/namespaces/{ns}/services",
}


def run_count(api: client.ApiClient, count: int, timeout: float) -> dict[str, Any]:
    ns = f"bench-{count}-{int(time.time())}"
    assert raw(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})[0] == 201
    while raw(api, "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] != 200:
        time.sleep(0.1)
    names = [f"m{i:03d}" for i in range(count)]
    t0 = time.monotonic()
    for name in names:
        status, answer = raw(api, "POST", IM_PATH.format(ns=ns), imagemodel(name, TINY))
        assert status == 201, answer
    applied = time.monotonic() - t0
    children_at: float | None = None
    ready_at: dict[str, float] = {}
    deadline = t0 + timeout
    while time.monotonic() < deadline and len(ready_at) < count:
        now = time.monotonic() - t0
        if children_at is None:
            counts = [len(list_objects(api, p.format(ns=ns))) for p in CHILD_PATHS.values()]
            if all(c >= count for c in counts):
                children_at = now
        for model in list_objects(api, IM_PATH.format(ns=ns)):
            name = model["metadata"]["name"]
            if name not in ready_at and (model.get("status") or {}).get("phase") == "Ready":
                ready_at[name] = now
        time.sleep(0.2)
    raw(api, "DELETE", f"/api/v1/namespaces/{ns}")
    times = sorted(ready_at.values())
    return {
        "count": count,
        "apply_s": applied,
        "children_s": children_at,
        "ready": len(times),
        "first_ready_s": times[0] if times else None,
        "median_ready_s": statistics.median(times) if times else None,
        "all_ready_s": times[-1] if len(times) == count else None,
    }


def fmt(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else "   (n/a)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    parser.add_argument("--counts", default="1,50")
    parser.add_argument("--poll-seconds", default="1")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    cp = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        from tests.support.controlplane import ControlPlane, default_bin_dir
        from tests.support.nodes import register_nodes

        cp = ControlPlane(default_bin_dir(), work / "cp").start()
        kubeconfig = cp.kubeconfig
        register_nodes(kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    apply_crd(api)
    ensure_storage_class(api)
    provisioner = HostPathProvisioner(api, work / "volumes").start()
    operator = OperatorProcess(kubeconfig, work / "operator.log", env={"KD_OPERATOR_POLL_SECONDS": args.poll_seconds})
    operator.start()
    try:
        results = [run_count(api, int(c), args.timeout) for c in args.counts.split(",")]
    finally:
        operator.stop()
        provisioner.stop()
        if cp is not None:
            cp.stop()
    print(f"operator bench (poll {args.poll_seconds}s; seconds from the first apply; operator log {operator.log_path})")
    print(f"{'models':>6} {'apply':>8} {'children':>8} {'first':>8} {'median':>8} {'all':>8}  ready")
    for r in results:
        print(
            f"{r['count']:6d} {fmt(r['apply_s'])} {fmt(r['children_s'])} {fmt(r['first_ready_s'])}"
            f" {fmt(r['median_ready_s'])} {fmt(r['all_ready_s'])}  {r['ready']}/{r['count']}"
        )
    return 0 if all(r["ready"] == r["count"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
