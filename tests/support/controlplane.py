"""A real local Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake kubelets), run as plain processes bound to 127.0.0.1.

Binaries come from tools/build-binaries.sh (built from source via the Go module proxy); pass the
directory that holds them (``$KUBEDIFFUSION_CACHE/bin/current`` by default).

Certificates are made with the ``openssl`` CLI: a CA, the apiserver serving certificate, the
service-account signing key pair, an admin client certificate (O=system:masters) and the
aggregator's front-proxy client certificate. Everything binds 127.0.0.1.

By hand::

    python -m tests.support.controlplane up [--workdir DIR] [--bin-dir DIR] [--no-nodes]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_for

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
STAGES_FILE = Path(__file__).parent / "kwok" / "stages.yaml"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"  # allocation range only; nothing sends traffic there
# Pod IPs come from here (kwok's --cidr; each fake node gets a /24 of it, tests/support/nodes.py), so a
# test can bind a real process to a pod's IP. Loopback works anywhere, but Kubernetes refuses loopback
# addresses in Endpoints/EndpointSlices: a Service over such pods gets no endpoints. For that, set
# KUBEDIFFUSION_TEST_POD_CIDR to a non-loopback range that is local to the host, e.g. inside a private
# network namespace:  unshare -rn sh -c 'ip link set lo up; ip route add local 10.244.0.0/16 dev lo; ...'
DEFAULT_POD_CIDR = "127.10.0.0/16"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node=fake"


def default_bin_dir() -> Path:
    """Where tools/build-binaries.sh puts (symlinks to) the pinned binaries."""
    if env := os.environ.get("KUBEDIFFUSION_BIN_DIR"):
        return Path(env)
    cache = os.environ.get("KUBEDIFFUSION_CACHE") or str(Path.home() / ".cache" / "kubediffusion")
    return Path(cache) / "bin" / "current"


def default_pod_cidr() -> str:
    return os.environ.get("KUBEDIFFUSION_TEST_POD_CIDR") or DEFAULT_POD_CIDR


def check_pod_cidr_is_local(pod_cidr: str) -> None:
    """Pod IPs must be bindable here (a later test runs real processes on them): fail early if not."""
    net = ipaddress.ip_network(pod_cidr)
    probe = str(net[1] if net.num_addresses > 1 else net[0])
    try:
        with socket.socket(socket.AF_INET6 if net.version == 6 else socket.AF_INET) as s:
            s.bind((probe, 0))
    except OSError as e:
        raise ControlPlaneError(
            f"pod CIDR {pod_cidr} is not local to this host (cannot bind {probe}: {e}); use a range in "
            "127.0.0.0/8, or make the range local first, e.g. `ip route add local "
            f"{pod_cidr} dev lo` (inside `unshare -rn` if not root)"
        ) from e


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the process that started it dies (no orphans after kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --- certificates -------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{e.stderr}") from e


def _make_certs(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", days, "-subj", "/CN=kubediffusion-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip

    def leaf(name: str, subject: str, ext: str) -> None:
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki,
        )  # fmt: skip
        (pki / f"{name}.ext").write_text(ext)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", days, "-extfile", f"{name}.ext",
            cwd=pki,
        )  # fmt: skip

    leaf(
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )
    leaf(
        "admin",
        "/O=system:masters/CN=kubernetes-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    leaf(  # the aggregator's client cert (requestheader auth), so aggregated APIs could work
        "front-proxy-client",
        "/CN=front-proxy-client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubediffusion-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": _b64(pki / "admin.crt"),
                    "client-key-data": _b64(pki / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": "kubediffusion-test", "context": {"cluster": "kubediffusion-test", "user": "admin"}}],
        "current-context": "kubediffusion-test",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))  # JSON is YAML; no yaml dependency needed here
    tmp.chmod(0o600)
    tmp.replace(path)


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.write(f"$ {' '.join(self.argv)}\n".encode())
        log.flush()
        self._log = log
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1."""

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        workdir: Path | str | None = None,
        pod_cidr: str | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self.pod_cidr = pod_cidr or default_pod_cidr()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubediffusion-cp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.components: list[Component] = []
        self.apiserver_port = 0
        self.startup_seconds = 0.0
        self._lock = threading.Lock()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET against the apiserver as admin; returns (status, body); (0, b"") if unreachable."""
        return _http_get(self.server + path, self._ssl_context(), timeout)

    def _add(self, name: str, argv: Sequence[str]) -> Component:
        comp = Component(name, list(argv), self.workdir / f"{name}.log")
        self.components.append(comp)
        comp.start()
        return comp

    def _wait(self, what: str, predicate: Callable[[], bool], timeout: float, comps: Sequence[Component]) -> None:
        def check() -> bool:
            for c in comps:
                c.check_alive()
            return predicate()

        wait_for(check, timeout=timeout, interval=0.2, message=f"control plane: {what}")

    def start(self, timeout: float = 180.0) -> ControlPlane:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"missing binaries in {self.bin_dir}: {', '.join(missing)}; run tools/build-binaries.sh"
            )
        if shutil.which("openssl") is None:
            raise ControlPlaneError("the openssl CLI is needed to make the test certificates")
        check_pod_cidr_is_local(self.pod_cidr)
        t0 = time.monotonic()
        deadline = t0 + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        try:
            _make_certs(self.pki)
            pki = self.pki

            # etcd
            etcd_client, etcd_peer = free_port(), free_port()
            etcd = self._add(
                "etcd",
                [
                    self._bin("etcd"),
                    "--name=default",
                    f"--data-dir={self.workdir / 'etcd-data'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                    f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",  # test data; speed over durability
                    "--quota-backend-bytes=2147483648",
                    "--log-level=warn",
                ],
            )
            etcd_url = f"http://127.0.0.1:{etcd_client}"
            self._wait(
                "etcd healthy",
                lambda: _http_get(etcd_url + "/health", None, 2.0)[1].find(b'"health":"true"') >= 0,
                left(),
                [etcd],
            )

            # kube-apiserver
            self.apiserver_port = free_port()
            apiserver = self._add(
                "kube-apiserver",
                [
                    self._bin("kube-apiserver"),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.apiserver_port}",
                    f"--cert-dir={self.workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                    f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--authorization-mode=Node,RBAC",
                    "--allow-privileged=true",
                    # Endpoints/EndpointSlices may not hold loopback IPs, so the apiserver can't publish
                    # its own 127.0.0.1 into the `kubernetes` Service; don't try (avoids error spam).
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    "--v=1",
                ],
            )
            self._wait(
                "kube-apiserver /readyz",
                lambda: self.api_get("/readyz", 3.0)[0] == 200,
                left(),
                [etcd, apiserver],
            )
            write_kubeconfig(self.kubeconfig, self.server, pki)
            kc = str(self.kubeconfig)

            kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
            kcm = self._add(
                "kube-controller-manager",
                [
                    self._bin("kube-controller-manager"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={self.workdir / 'kcm-certs'}",
                    "--leader-elect=false",
                    "--controllers=*",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--allocate-node-cidrs=false",  # nodes carry their own 127.x podCIDR
                    "--cluster-name=kubediffusion-test",
                    "--profiling=false",
                    "--v=1",
                ],
            )
            scheduler = self._add(
                "kube-scheduler",
                [
                    self._bin("kube-scheduler"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={sched_port}",
                    f"--cert-dir={self.workdir / 'scheduler-certs'}",
                    "--leader-elect=false",
                    "--profiling=false",
                    "--v=1",
                ],
            )
            kwok = self._add(
                "kwok",
                [
                    self._bin("kwok"),
                    f"--kubeconfig={kc}",
                    f"--config={STAGES_FILE}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}",
                    "--manage-nodes-with-label-selector=",
                    "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
                    f"--cidr={self.pod_cidr}",
                    "--node-ip=127.0.0.1",
                    "--node-lease-duration-seconds=40",
                    f"--server-address=127.0.0.1:{kwok_port}",
                ],
            )
            rest = [etcd, apiserver, kcm, scheduler, kwok]
            unverified = ssl.create_default_context()
            unverified.check_hostname = False
            unverified.verify_mode = ssl.CERT_NONE
            self._wait(
                "kube-controller-manager /healthz",
                lambda: _http_get(f"https://127.0.0.1:{kcm_port}/healthz", unverified, 2.0)[0] == 200,
                left(),
                rest,
            )
            self._wait(
                "kube-scheduler /healthz",
                lambda: _http_get(f"https://127.0.0.1:{sched_port}/healthz", unverified, 2.0)[0] == 200,
                left(),
                rest,
            )
            self._wait(
                "kwok /healthz",
                lambda: _http_get(f"http://127.0.0.1:{kwok_port}/healthz", None, 2.0)[0] == 200,
                left(),
                rest,
            )
            self._wait(
                "default namespace and ServiceAccount",
                lambda: self.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                left(),
                rest,
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def check_alive(self) -> None:
        for c in self.components:
            c.check_alive()

    def stop(self) -> None:
        with self._lock:
            # Reverse order: clients first, etcd last.
            for comp in reversed(self.components):
                comp.stop()
            self.components = []

    def cleanup(self) -> None:
        """stop() and, if the workdir was a temporary one made here, remove it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_get(url: str, ctx: ssl.SSLContext | None, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (OSError, ssl.SSLError):
        return 0, b""


# --- CLI ----------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else None
    cp = ControlPlane(args.bin_dir, workdir, args.pod_cidr)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting control plane in {cp.workdir} (binaries from {cp.bin_dir}) ...", file=sys.stderr)
    try:
        cp.start()
        if not args.no_nodes:
            from tests.support.nodes import register_nodes

            register_nodes(cp.kubeconfig, pod_cidr=cp.pod_cidr)
        print(f"control plane up in {cp.startup_seconds:.1f}s; logs in {cp.workdir}", file=sys.stderr)
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        while not stop.wait(1.0):
            cp.check_alive()
    finally:
        print("stopping control plane ...", file=sys.stderr)
        cp.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.controlplane")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a control plane and keep it running until Ctrl-C/SIGTERM")
    up.add_argument("--workdir", help="state, certs, kubeconfig and logs (default: a new temp dir)")
    up.add_argument("--bin-dir", default=None, help=f"binaries (default: {default_bin_dir()})")
    up.add_argument("--pod-cidr", default=None, help=f"pod IP range (default: {default_pod_cidr()})")
    up.add_argument("--no-nodes", action="store_true", help="do not register the fake kwok nodes")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return _cmd_up(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
