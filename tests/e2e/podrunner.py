"""Test infrastructure, not product: a tiny "kubelet" that runs pods as local processes.

The local control plane has no container runtime. This runner registers one node (``runner-0``,
tainted so only pods that tolerate it land there: tests/e2e/runner_node.py) and does for its pods what a
kubelet would: it gives each pod an IP from a loopback range, runs its init containers one after the
other and then the first container's command with the pod's env, maps volumes to local directories,
reports status (Running, Ready from the readiness probe, restarts, exit codes and termination messages:
tests/e2e/podstatus.py), and stops the process when the pod is deleted.

Env ``valueFrom.secretKeyRef`` is resolved as the kubelet resolves it: a Secret or key that does not
exist (and is not optional) keeps the container from starting, waiting with reason
``CreateContainerConfigError`` and the kubelet's own message, retried until it exists. ``image_env``
stands for the ENV an image sets (by image reference), under the pod's own env. Secret and ConfigMap
volumes are written as the kubelet projects them (each key, or each of ``items``, a file) before every
start; a missing one keeps the container from starting too (a kubelet reports that as a FailedMount
event, with the pod ContainerCreating: close enough for the tests, which read the logs).

Path mapping: a process cannot see ``/models``, so every env value or argument that starts with a volume
mount path (or each such string of an env value that is JSON: ``KD_INFERENCE_ADAPTERS``) is rewritten to
the local directory backing that volume (PVCs use the test provisioner's directories, as does a generic
ephemeral volume: the claim ``<pod>-<volume>`` Kubernetes makes for it; emptyDirs a per-pod temp dir),
and ``0.0.0.0`` (listen on the pod's address) becomes the pod IP. The container's
``terminationMessagePath`` is mapped to a per-pod file the same way.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e import runner_node
from tests.e2e.podstatus import InitContainer, RunningPod, now, pod_status
from tests.e2e.runner_node import NODE_NAME
from tests.support.provisioner import claim_directory

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = 1.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class ContainerConfigError(Exception):
    """What the kubelet reports as CreateContainerConfigError (the container is not started, and retried)."""


class PodRunner:
    def __init__(
        self,
        api_client: client.ApiClient,
        volume_root: Path,
        workdir: Path,
        pod_cidr: str = "127.20.0.0/16",
        interval: float = 0.3,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.volume_root = volume_root
        self.workdir = workdir
        self.interval = interval
        self._addresses = (str(ip) for ip in ipaddress.ip_network(pod_cidr).hosts())
        self._pods: dict[str, RunningPod] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._http = httpx.Client(timeout=1.0)
        self.image_env: dict[str, dict[str, str]] = {}  # image reference -> the ENV that image sets

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> PodRunner:
        runner_node.register(self.core, self.coordination)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for pod in list(self._pods.values()):
            self._kill(pod)
        self._http.close()
        with contextlib.suppress(ApiException):
            self.core.delete_node(NODE_NAME)

    def processes(self, namespace: str) -> dict[str, subprocess.Popen[bytes]]:
        """Live processes by pod name (tests use this to kill one, as a crash would)."""
        return {
            p.name: p.process
            for p in list(self._pods.values())
            if p.namespace == namespace and p.process is not None and p.process.poll() is None
        }

    # main loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        last_lease = 0.0
        last_status = time.monotonic()
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - last_lease > 5:
                    runner_node.heartbeat(self.core, self.coordination, force_status=now - last_status > 20)
                    last_lease = now
                    if now - last_status > 20:
                        last_status = now
                self._sync()
            except Exception:
                log.exception("pod runner pass failed")
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            running = self._pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                if running is not None:
                    self._kill(running)
                    self._pods.pop(uid, None)
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
                continue
            if running is None:
                running = self._admit(pod)
            self._advance(running)
        for uid in set(self._pods) - seen:
            self._kill(self._pods.pop(uid))

    def _admit(self, pod: Any) -> RunningPod:
        workdir = self.workdir / f"{pod.metadata.namespace}-{pod.metadata.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        running = RunningPod(
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            ip=next(self._addresses),
            spec=pod.spec,
            workdir=workdir,
            inits=[InitContainer() for _ in pod.spec.init_containers or []],
        )
        for volume in pod.spec.volumes or []:
            if volume.persistent_volume_claim is not None:
                path = claim_directory(self.volume_root, running.namespace, volume.persistent_volume_claim.claim_name)
            elif volume.ephemeral is not None:  # the claim Kubernetes made from the template: <pod>-<volume>
                path = claim_directory(self.volume_root, running.namespace, f"{running.name}-{volume.name}")
            else:  # emptyDir and anything else: private to the pod
                path = workdir / "volumes" / volume.name
            path.mkdir(parents=True, exist_ok=True)
            running.mounts[volume.name] = path
        self._pods[running.uid] = running
        return running

    def _advance(self, pod: RunningPod) -> None:
        process = pod.process
        restart_policy = pod.spec.restart_policy or "Always"
        if process is None and not pod.finished and time.monotonic() >= pod.next_start:
            try:
                self._start_process(pod)
                pod.config_error = ""
            except ContainerConfigError as exc:
                pod.config_error = str(exc)
                pod.next_start = time.monotonic() + RESTART_BACKOFF_SECONDS
        elif process is not None and process.poll() is not None:
            code = process.returncode if process.returncode >= 0 else 128 - process.returncode  # as runtimes do
            exited = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": self._termination_message(pod),
                "startedAt": pod.started_at,
                "finishedAt": now(),
            }
            pod.process = None
            index = pod.current_init()
            if index is not None:
                self._init_exited(pod, pod.inits[index], exited, restart_policy)
                self._report(pod)
                return
            pod.last_exit = exited
            pod.ready = False
            if restart_policy == "Never" or (restart_policy == "OnFailure" and code == 0):
                pod.finished = True
            else:
                pod.restart_count += 1
                pod.next_start = time.monotonic() + RESTART_BACKOFF_SECONDS
        elif process is not None and pod.current_init() is None:
            pod.ready = self._probe_ready(pod)
        self._report(pod)

    @staticmethod
    def _init_exited(pod: RunningPod, init: InitContainer, exited: dict[str, Any], restart_policy: str) -> None:
        """The next container starts after a clean exit; a failed one is retried, or fails the pod (Never)."""
        if exited["exitCode"] == 0:
            init.done = exited
            pod.next_start = 0.0
        elif restart_policy == "Never":
            init.last_exit = exited
            pod.finished = True
        else:
            init.last_exit = exited
            init.restart_count += 1
            pod.next_start = time.monotonic() + RESTART_BACKOFF_SECONDS

    # processes -----------------------------------------------------------------------------------
    def _container(self, pod: RunningPod) -> Any:
        return pod.container()

    def _rewrite(self, pod: RunningPod, value: str) -> str:
        container = self._container(pod)
        for mount in sorted(container.volume_mounts or [], key=lambda m: -len(m.mount_path)):
            base = pod.mounts[mount.name] / (mount.sub_path or "")
            if value == mount.mount_path or value.startswith(mount.mount_path.rstrip("/") + "/"):
                return str(base) + value[len(mount.mount_path.rstrip("/")) :]
        if value == container.termination_message_path or value == "/dev/termination-log":
            return str(pod.workdir / "termination-log")
        return value.replace("0.0.0.0", pod.ip)

    def _rewrite_env(self, pod: RunningPod, value: str) -> str:
        """An env value, or each string of a JSON one (the model server's pipeline settings hold paths)."""
        if not value.startswith(("[", "{")):
            return self._rewrite(pod, value)
        try:
            parsed = json.loads(value)
        except ValueError:
            return self._rewrite(pod, value)

        def walk(item: Any) -> Any:
            if isinstance(item, str):
                return self._rewrite(pod, item)
            if isinstance(item, list):
                return [walk(x) for x in item]
            if isinstance(item, dict):
                return {k: walk(v) for k, v in item.items()}
            return item

        rewritten = walk(parsed)
        return value if rewritten == parsed else json.dumps(rewritten)

    def _environment(self, pod: RunningPod) -> dict[str, str]:
        container = self._container(pod)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(pod.workdir),
            "TMPDIR": str(pod.workdir),
            "PYTHONUNBUFFERED": "1",
            # The image's code is this checkout, whatever the venv's (editable) install points at.
            "PYTHONPATH": str(REPO_ROOT),
            **self.image_env.get(container.image or "", {}),
        }
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = self._rewrite_env(pod, _expand(var.value, env))
            elif var.value_from is not None and var.value_from.secret_key_ref is not None:
                value = self._secret_value(pod.namespace, var.value_from.secret_key_ref)
                if value is not None:
                    env[var.name] = value
            elif var.value_from is not None and var.value_from.field_ref is not None:
                path = var.value_from.field_ref.field_path
                env[var.name] = {
                    "status.podIP": pod.ip,
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.namespace,
                }.get(path, "")
            else:
                env[var.name] = ""
        return env

    def _secret_value(self, namespace: str, ref: Any) -> str | None:
        """The kubelet's ``secretKeyRef``: the value; None when optional and absent; else its error message."""
        try:
            secret = self.core.read_namespaced_secret(ref.name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if ref.optional:
                return None
            raise ContainerConfigError(f'secret "{ref.name}" not found') from None
        data = secret.data or {}
        if ref.key not in data:
            if ref.optional:
                return None
            raise ContainerConfigError(f"couldn't find key {ref.key} in Secret {namespace}/{ref.name}")
        return base64.b64decode(data[ref.key]).decode()

    def _project_volumes(self, pod: RunningPod) -> None:
        """Secret and ConfigMap volumes as files in the pod's directories for them."""
        for volume in pod.spec.volumes or []:
            if volume.secret is not None:
                source, name, kind = volume.secret, volume.secret.secret_name, "secret"
                read = self.core.read_namespaced_secret
            elif volume.config_map is not None:
                source, name, kind = volume.config_map, volume.config_map.name, "configmap"
                read = self.core.read_namespaced_config_map
            else:
                continue
            try:
                found = read(name, pod.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                if source.optional:
                    continue
                raise ContainerConfigError(f'volume "{volume.name}": {kind} "{name}" not found') from None
            data = {
                key: base64.b64decode(value) if kind == "secret" else value.encode()
                for key, value in (found.data or {}).items()
            }
            for key, path in [(item.key, item.path) for item in source.items or []] or [(k, k) for k in data]:
                if key not in data:
                    raise ContainerConfigError(f'volume "{volume.name}": no key {key} in {kind} "{name}"')
                target = pod.mounts[volume.name] / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[key])

    def _start_process(self, pod: RunningPod) -> None:
        container = self._container(pod)
        self._project_volumes(pod)
        env = self._environment(pod)
        argv = [_expand(part, env) for part in [*(container.command or []), *(container.args or [])]]
        argv = [self._rewrite(pod, part) for part in argv]
        if argv and argv[0] == "kubediffusion":  # the image's entry point, from this checkout's venv
            argv = [sys.executable, "-m", "kubediffusion.cli", *argv[1:]]
        (pod.workdir / "termination-log").unlink(missing_ok=True)
        index = pod.current_init()
        log_name = f"container-{pod.restart_count}.log"
        if index is not None:
            log_name = f"init-{container.name}-{pod.inits[index].restart_count}.log"
        log_file = open(pod.workdir / log_name, "wb")  # noqa: SIM115
        pod.process = subprocess.Popen(
            argv, env=env, cwd=pod.workdir, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        log_file.close()
        pod.started_at = now()
        log.info("started pod %s/%s at %s: %s", pod.namespace, pod.name, pod.ip, " ".join(argv))

    def _kill(self, pod: RunningPod) -> None:
        process = pod.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(pod.workdir / "volumes", ignore_errors=True)

    def _termination_message(self, pod: RunningPod) -> str:
        path = pod.workdir / "termination-log"
        return path.read_text()[:4096] if path.exists() else ""

    def _probe_ready(self, pod: RunningPod) -> bool:
        container = pod.spec.containers[0]
        probe = container.readiness_probe
        if probe is None or probe.http_get is None:
            return True
        port = probe.http_get.port
        if isinstance(port, str) and not port.isdigit():
            port = next(p.container_port for p in container.ports or [] if p.name == port)
        try:
            response = self._http.get(f"http://{pod.ip}:{port}{probe.http_get.path or '/'}")
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400

    # status --------------------------------------------------------------------------------------
    def _report(self, pod: RunningPod) -> None:
        status = pod_status(pod)
        key = repr(status)
        if pod.last_report == key:
            return
        try:
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, status)
            pod.last_report = key
        except ApiException as exc:
            if exc.status != 404:
                raise


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion in command, args and env values."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)
