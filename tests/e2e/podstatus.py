"""Test infrastructure: the pod runner's record of one pod, and the status a kubelet reports for it.

Init containers run one after the other before the main container, each to a clean exit (a failure is
retried with a back-off, or fails the pod with ``restartPolicy: Never``), as a kubelet runs them: until
they are done the pod is ``Pending``, its ``Initialized`` condition is False and the main container
waits with reason ``PodInitializing``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class InitContainer:
    restart_count: int = 0
    last_exit: dict[str, Any] | None = None  # its last failed run
    done: dict[str, Any] | None = None  # its clean exit, once it made one


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    ip: str
    spec: Any
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started_at: str = ""
    ready: bool = False
    finished: bool = False
    last_exit: dict[str, Any] | None = None
    next_start: float = 0.0
    mounts: dict[str, Path] = field(default_factory=dict)
    last_report: str = ""
    config_error: str = ""  # why the container cannot start yet (CreateContainerConfigError)
    admitted_at: str = field(default_factory=now)  # the pod's startTime, as a kubelet sets it once
    inits: list[InitContainer] = field(default_factory=list)

    def current_init(self) -> int | None:
        """The init container to run (or running), None once all have exited cleanly."""
        return next((i for i, init in enumerate(self.inits) if init.done is None), None)

    def container(self) -> Any:
        """The container spec the pod is at: the current init container, else the main one."""
        index = self.current_init()
        return self.spec.init_containers[index] if index is not None else self.spec.containers[0]


def _state(pod: RunningPod, *, waiting_reason: str) -> dict[str, Any]:
    if pod.process is not None:
        return {"running": {"startedAt": pod.started_at}}
    if pod.config_error:
        return {"waiting": {"reason": "CreateContainerConfigError", "message": pod.config_error}}
    return {"waiting": {"reason": waiting_reason}}


def _init_statuses(pod: RunningPod) -> list[dict[str, Any]]:
    out = []
    current = pod.current_init()
    for index, (spec, init) in enumerate(zip(pod.spec.init_containers or [], pod.inits, strict=True)):
        if init.done is not None:
            state: dict[str, Any] = {"terminated": init.done}
        elif pod.finished and init.last_exit is not None:
            state = {"terminated": init.last_exit}
        elif index == current:
            state = _state(pod, waiting_reason="CrashLoopBackOff" if init.restart_count else "PodInitializing")
        else:
            state = {"waiting": {"reason": "PodInitializing"}}
        status: dict[str, Any] = {
            "name": spec.name,
            "image": spec.image or "",
            "imageID": "",
            "ready": init.done is not None,
            "restartCount": init.restart_count,
            "started": index == current and pod.process is not None,
            "state": state,
        }
        if init.last_exit is not None and not pod.finished:
            status["lastState"] = {"terminated": init.last_exit}
        out.append(status)
    return out


def pod_status(pod: RunningPod) -> dict[str, Any]:
    """The status subresource a kubelet would write for this pod now."""
    container = pod.spec.containers[0]
    initializing = pod.current_init() is not None
    if pod.finished and pod.last_exit is not None and not initializing:
        phase = "Succeeded" if pod.last_exit["exitCode"] == 0 else "Failed"
        state: dict[str, Any] = {"terminated": pod.last_exit}
    elif pod.finished:  # an init container failed for good
        phase, state = "Failed", {"waiting": {"reason": "PodInitializing"}}
    elif initializing:
        phase, state = "Pending", {"waiting": {"reason": "PodInitializing"}}
    else:
        reason = "CrashLoopBackOff" if pod.restart_count else "ContainerCreating"
        state = _state(pod, waiting_reason=reason)
        phase = "Running" if pod.process is not None or pod.restart_count else "Pending"
    ready = "True" if pod.ready else "False"
    container_status: dict[str, Any] = {
        "name": container.name,
        "image": container.image or "",
        "imageID": "",
        "ready": pod.ready,
        "restartCount": pod.restart_count,
        "started": pod.process is not None and not initializing,
        "state": state,
        "containerID": f"process://{pod.process.pid}" if pod.process and not initializing else "",
    }
    if pod.last_exit is not None and not pod.finished:
        container_status["lastState"] = {"terminated": pod.last_exit}
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": pod.ip,
        "podIPs": [{"ip": pod.ip}],
        "startTime": pod.admitted_at,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "False" if initializing else "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": [container_status],
    }
    if pod.inits:
        status["initContainerStatuses"] = _init_statuses(pod)
    return {"status": status}
