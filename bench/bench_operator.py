"""Operator latency on the local control plane: apply → all children created → Ready, for 1 and 50 models.

    python bench/bench_operator.py                 # starts its own control plane (tests/support)
    python bench/bench_operator.py --kubeconfig K  # or uses a running one (with the kwok nodes)
    python bench/bench_operator.py --counts 1,10,50 --poll-seconds 1
    # side by side with an older operator, alternating runs in one control plane:
    git worktree add /tmp/op-before HEAD   # or: mkdir /tmp/op-before && git archive HEAD | tar -x -C /tmp/op-before
    python bench/bench_operator.py --counts 50 --baseline /tmp/op-before --rounds 3

Every model is the tiny smoke-test model on CPU (kwok runs no containers: the Job "succeeds" and pods
become Ready as soon as they are scheduled), so this measures the operator + API server + controllers,
not downloads or model loading. Each run gets a fresh namespace and a fresh operator (the real CLI)
watching only it; a ``--baseline`` operator runs the same CLI from another checkout (PYTHONPATH, with
PYTHONSAFEPATH so this checkout does not shadow it). Besides the latencies, each run reports the
operator's CPU seconds and the API server's count of requests by verb (every client: the operator is
the only one that APPLYs and nearly the only one that GETs; this script LISTs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from tests.support.waiting import wait_for  # noqa: E402

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
VERBS = ("APPLY", "GET", "LIST", "WATCH")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    label: str
    root: Path | None  # another checkout's operator, or None for this one

    def env(self) -> dict[str, str]:
        if self.root is None:
            return {}
        return {"PYTHONPATH": str(self.root), "PYTHONSAFEPATH": "1"}


def tuned_control_plane(controller_qps: int) -> Any:
    """tests/support's ControlPlane, with kube-controller-manager's client rate limit raised if asked."""
    from tests.support.controlplane import Component, ControlPlane

    class Tuned(ControlPlane):
        def _add(self, name: str, argv: Sequence[str]) -> Component:
            if name == "kube-controller-manager" and controller_qps > 0:
                argv = [*argv, f"--kube-api-qps={controller_qps}", f"--kube-api-burst={2 * controller_qps}"]
            return super()._add(name, argv)

    return Tuned


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def request_counts(api: client.ApiClient) -> dict[str, float]:
    """apiserver_request_total summed by verb (every client, every resource)."""
    status, text = raw(api, "GET", "/metrics")
    assert status == 200 and isinstance(text, str), status
    counts = dict.fromkeys(VERBS, 0.0)
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        verb = labels.split('verb="', 1)[1].split('"', 1)[0] if 'verb="' in labels else ""
        if verb in counts:
            counts[verb] += float(value)
    return counts


def run_count(
    api: client.ApiClient, kubeconfig: Path, work: Path, variant: Variant, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    ns = f"bench-{variant.label}-{count}-{time.time_ns() % 10**9}"
    assert raw(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})[0] == 201
    while raw(api, "GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] != 200:
        time.sleep(0.1)
    env = {"KD_OPERATOR_POLL_SECONDS": args.poll_seconds, "KD_OPERATOR_NAMESPACE": ns, **variant.env()}
    operator = OperatorProcess(kubeconfig, work / f"operator-{ns}.log", env=env).start()
    assert operator.proc is not None
    try:
        cpu0, requests0 = cpu_seconds(operator.proc.pid), request_counts(api)
        result = watch_models(api, ns, count, args.timeout)
        cpu = cpu_seconds(operator.proc.pid) - cpu0
        requests1 = request_counts(api)
        result.update(variant=variant.label, cpu_s=cpu, log=operator.log_path)
        result.update({verb: requests1[verb] - requests0[verb] for verb in VERBS})
        raw(api, "DELETE", f"/api/v1/namespaces/{ns}")
        # The operator removes its finalizers; wait for that so the next run starts on a quiet cluster.
        wait_for(lambda: not list_objects(api, IM_PATH.format(ns=ns)), timeout=120, interval=0.5, message="cleanup")
    finally:
        operator.stop()
    return result


def watch_models(api: client.ApiClient, ns: str, count: int, timeout: float) -> dict[str, Any]:
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


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    qps = f"controller-manager qps {args.controller_qps}" if args.controller_qps else "controller-manager qps default"
    print(
        f"operator bench (poll {args.poll_seconds}s; {qps}; seconds from the first apply;"
        f" load {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{'variant':>8} {'models':>6} {'apply':>8} {'children':>8} {'first':>8} {'median':>8} {'all':>8}  ready"
        f" {'cpu_s':>6} {'APPLY':>6} {'GET':>6} {'LIST':>6}"
    )
    for r in results:
        print(
            f"{r['variant']:>8} {r['count']:6d} {fmt(r['apply_s'])} {fmt(r['children_s'])} {fmt(r['first_ready_s'])}"
            f" {fmt(r['median_ready_s'])} {fmt(r['all_ready_s'])}  {r['ready']:>2}/{r['count']:<2}"
            f" {r['cpu_s']:6.1f} {r['APPLY']:6.0f} {r['GET']:6.0f} {r['LIST']:6.0f}"
        )
    labels = list(dict.fromkeys(r["variant"] for r in results))
    if len(labels) < 2:
        return
    print("medians over rounds (all ready, s; operator cpu, s); ratio after/before")
    for count in dict.fromkeys(r["count"] for r in results):
        med = {}
        for label in labels:
            runs = [r for r in results if r["variant"] == label and r["count"] == count]
            done = [r["all_ready_s"] for r in runs if r["all_ready_s"] is not None]
            med[label] = (statistics.median(done) if done else None, statistics.median(r["cpu_s"] for r in runs))
        (b_all, b_cpu), (a_all, a_cpu) = med[labels[0]], med[labels[1]]
        ratio = f"{a_all / b_all:.2f}x" if a_all and b_all else "n/a"
        print(
            f"  {count:3d} models: {labels[0]} {fmt(b_all)} ({b_cpu:.1f} cpu)  {labels[1]} {fmt(a_all)}"
            f" ({a_cpu:.1f} cpu)  ratio {ratio}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting one")
    parser.add_argument("--counts", default="1,50", help="comma-separated numbers of models, one run each")
    parser.add_argument("--poll-seconds", default="1", help="the operator's KD_OPERATOR_POLL_SECONDS")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take to get all Ready")
    parser.add_argument("--baseline", type=Path, help="another checkout whose operator runs side by side ('before')")
    parser.add_argument("--rounds", type=int, default=1, help="runs per count and variant, alternating variants")
    parser.add_argument(
        "--controller-qps",
        type=int,
        default=0,
        help="kube-controller-manager's --kube-api-qps (burst twice that) in the control plane this starts;"
        " 0 = its default (20 requests/s per controller: the PV binder, Job, Deployment and ReplicaSet"
        " controllers each bind, create and update 50 models' objects at that pace)",
    )
    args = parser.parse_args()
    variants = [Variant("after" if args.baseline else "current", None)]
    if args.baseline:
        if not (args.baseline / "kubediffusion" / "cli.py").is_file():
            parser.error(f"--baseline {args.baseline}: no kubediffusion/cli.py there")
        variants.insert(0, Variant("before", args.baseline.resolve()))
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    cp = None
    if args.kubeconfig:
        kubeconfig = Path(args.kubeconfig)
    else:
        from tests.support.controlplane import default_bin_dir
        from tests.support.nodes import register_nodes

        cp = tuned_control_plane(args.controller_qps)(default_bin_dir(), work / "cp").start()
        kubeconfig = cp.kubeconfig
        register_nodes(kubeconfig)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    apply_crd(api)
    ensure_storage_class(api)
    provisioner = HostPathProvisioner(api, work / "volumes").start()
    results = []
    try:
        for _ in range(args.rounds):
            for count in (int(c) for c in args.counts.split(",")):
                for variant in variants:
                    results.append(run_count(api, kubeconfig, work, variant, count, args))
                    print(f"  ... {variant.label} {count}: all ready {fmt(results[-1]['all_ready_s'])}", flush=True)
    finally:
        provisioner.stop()
        if cp is not None:
            cp.stop()
    report(results, args)
    print(f"operator logs in {work}")
    return 0 if all(r["ready"] == r["count"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
