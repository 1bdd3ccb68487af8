"""What the kubelet, the scheduler and the Job controller say is wrong with the pods and Jobs we made.

Pure functions on objects as read from the API server (plain dicts): no API calls, no clock. Each
answer is a :class:`Failure` with one of the stable reasons of :mod:`kubediffusion.imagemodel.status`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubediffusion.imagemodel.status import (
    CACHE_TOO_SMALL_FOR_SWAP,
    CONFIG_ERROR,
    CONTAINER_RESTARTED,
    DOWNLOAD_FAILED,
    IMAGE_PULL_BACK_OFF,
    MODEL_LOAD_FAILED,
    SECRET_NOT_FOUND,
    UNSCHEDULABLE,
)

Obj = Mapping[str, Any]
MAX_MESSAGE = 1024
SERVER_CONTAINER = "inference"  # our server, in every model pod
FETCH_CONTAINER = "fetch"  # fetch-model filling the model's copy (the cache Job; a perNode pod's init container)
ENGINE_CONTAINER = "engine"  # a sidecar engine: an init container that keeps running (restartPolicy Always)

# The scheduler's words for a pod whose Immediate-binding claim has no volume yet (PVCPending, not Unschedulable).
UNBOUND_CLAIMS = "unbound immediate PersistentVolumeClaims"
# The kubelet's words (CreateContainerConfigError) for an env secretKeyRef it cannot resolve: the Secret
# is absent (`secret "hf" not found`) or lacks the key (`couldn't find key token in Secret ns/hf`).
_SECRET_MISSING = re.compile(r'secrets? "[^"]*" not found|couldn\'t find key .* in Secret ')


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    exit_code: int | None = None


def field(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def condition_of(obj: Obj | None, type_: str) -> Obj | None:
    for cond in field(obj, "status", "conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: Obj | None, type_: str) -> bool:
    cond = condition_of(obj, type_)
    return cond is not None and cond.get("status") == "True"


def short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _newest_first(pods: Sequence[Obj]) -> list[Obj]:
    return sorted(pods, key=lambda pod: str(field(pod, "metadata", "creationTimestamp") or ""), reverse=True)


def _exit_code(terminated: Obj) -> int | None:
    code = terminated.get("exitCode")
    return int(code) if code is not None else None


def pod_problem(pods: Sequence[Obj]) -> Failure | None:
    """The first thing a kubelet or scheduler reports as wrong with these pods, newest pod first."""
    for pod in _newest_first(pods):
        if field(pod, "metadata", "deletionTimestamp"):
            continue
        scheduled = condition_of(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return Failure(UNSCHEDULABLE, short(str(scheduled.get("message") or "no node fits the pod")))
        for status in field(pod, "status", "initContainerStatuses") or []:
            # fetch-model (a perNode cache) runs to completion; a sidecar engine runs beside our server.
            sidecar = status.get("name") == ENGINE_CONTAINER
            problem = _waiting_problem(status) or (_crash_problem(status) if sidecar else _fetch_problem(status))
            if problem is not None:
                return problem
        for status in field(pod, "status", "containerStatuses") or []:
            problem = _waiting_problem(status) or _crash_problem(status)
            if problem is not None:
                return problem
    return None


def _crash_problem(status: Obj) -> Failure | None:
    """A serving container (our server, or a sidecar engine) that exited and is not ready again."""
    reason = field(status, "state", "waiting", "reason")
    last = field(status, "lastState", "terminated") or {}
    restarted = last and int(status.get("restartCount") or 0) > 0
    if reason != "CrashLoopBackOff" and not (restarted and not status.get("ready")):
        return None
    detail = last.get("message") or last.get("reason") or "container restarted"
    # A crash loop, or an exit the server itself explained as a load failure, is ModelLoadFailed;
    # a single crash of a serving container (OOM kill, node trouble) is a restart in progress.
    load_failed = reason == "CrashLoopBackOff" or str(detail).startswith(MODEL_LOAD_FAILED)
    who = "engine container" if status.get("name") == ENGINE_CONTAINER else "container"
    return Failure(
        MODEL_LOAD_FAILED if load_failed else CONTAINER_RESTARTED,
        short(f"{who} restarted {status.get('restartCount', 0)} time(s): {detail}"),
        _exit_code(last),
    )


def _waiting_problem(status: Obj) -> Failure | None:
    """A container the kubelet cannot start: its image, or its config (a missing Secret)."""
    waiting = field(status, "state", "waiting") or {}
    reason = waiting.get("reason")
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        return Failure(IMAGE_PULL_BACK_OFF, short(f"{reason}: {waiting.get('message') or ''}"))
    if reason == CONFIG_ERROR:
        message = str(waiting.get("message") or reason)
        missing_secret = _SECRET_MISSING.search(message)
        return Failure(SECRET_NOT_FOUND if missing_secret else CONFIG_ERROR, short(message))
    return None


def _fetch_problem(status: Obj) -> Failure | None:
    """fetch-model in a pod's init container (a perNode cache) that exited with an error, now or before."""
    term = field(status, "state", "terminated") or field(status, "lastState", "terminated") or {}
    if not term or term.get("exitCode") == 0:
        return None
    return _fetch_error(term)


def _fetch_error(term: Obj) -> Failure:
    message = str(term.get("message") or term.get("reason") or "")
    reason = DOWNLOAD_FAILED
    try:  # fetch-model writes {"error": ..., "reason": ...} as JSON
        parsed = json.loads(message)
        if isinstance(parsed, dict) and parsed.get("error"):
            message = str(parsed["error"])
            reason = parsed["reason"] if parsed.get("reason") in FETCH_REASONS else reason
    except ValueError:
        pass
    return Failure(reason, short(message or "fetch-model failed"), _exit_code(term))


def recovered_restart(pods: Sequence[Obj]) -> Failure | None:
    """A container that crashed and is ready again: not a current problem, but worth ``lastFailure``."""
    for pod in _newest_first(pods):
        for status in field(pod, "status", "containerStatuses") or []:
            last = field(status, "lastState", "terminated")
            if last and status.get("ready") and int(status.get("restartCount") or 0) > 0:
                detail = last.get("message") or last.get("reason") or "container exited"
                return Failure(
                    CONTAINER_RESTARTED,
                    short(
                        f"pod {field(pod, 'metadata', 'name')} restarted {status.get('restartCount')} time(s) "
                        f"and recovered; last exit: {detail}"
                    ),
                    _exit_code(last),
                )
    return None


def _terminated(pod: Obj) -> Obj:
    for status in field(pod, "status", "containerStatuses") or []:
        term = field(status, "state", "terminated")
        if term:
            return dict(term)
    return {}


def _terminated_all(pod: Obj) -> list[tuple[str, Obj]]:
    """(name, terminated state) of the init containers that succeeded, then of the containers."""
    out = _init_terminated_all(pod)
    for status in field(pod, "status", "containerStatuses") or []:
        term = field(status, "state", "terminated")
        if term:
            out.append((str(status.get("name", "")), dict(term)))
    return out


def _init_terminated_all(pod: Obj) -> list[tuple[str, Obj]]:
    out: list[tuple[str, Obj]] = []
    for status in field(pod, "status", "initContainerStatuses") or []:
        term = field(status, "state", "terminated")
        if term and term.get("exitCode") == 0:
            out.append((str(status.get("name", "")), dict(term)))
    return out


def _failed_terminated(pod: Obj) -> Obj:
    """The failed init container's state (a cache Job with extra weights runs fetch-model in several),
    else the container's."""
    for status in field(pod, "status", "initContainerStatuses") or []:
        term = field(status, "state", "terminated")
        if term and term.get("exitCode") not in (0, None):
            return dict(term)
    return _terminated(pod)


def fetch_summary(pods: Sequence[Obj], *, init: bool = False) -> dict[str, Any]:
    """The JSON fetch-model writes to its termination message, from the newest pod that succeeded
    (``init``: whose init container did, for perNode caches, where fetch-model runs before the server).
    The model's own container (``fetch``) when the pod has several (extra weights: :func:`fetch_summaries`)."""
    summaries = fetch_summaries(pods, init=init)
    return summaries.get(FETCH_CONTAINER) or next(iter(summaries.values()), {})


def fetch_summaries(pods: Sequence[Obj], *, init: bool = False) -> dict[str, dict[str, Any]]:
    """Every fetch container's summary by container name, from the newest pod that succeeded (``init``:
    whose init containers did; then the model server is not one of them)."""
    for pod in _newest_first(pods):
        if init:
            terms = _init_terminated_all(pod)
        elif field(pod, "status", "phase") == "Succeeded":
            terms = _terminated_all(pod)
        else:
            continue
        found: dict[str, dict[str, Any]] = {}
        for name, term in terms:
            try:
                value = json.loads(term.get("message") or "")
            except ValueError:
                continue
            if isinstance(value, dict):
                found.setdefault(name, value)
        if found:
            return found
    return {}


# Reasons fetch-model may name in its summary instead of DownloadFailed.
FETCH_REASONS = frozenset({CACHE_TOO_SMALL_FOR_SWAP})


def job_failure(job: Obj, pods: Sequence[Obj]) -> Failure:
    """Why the cache Job failed: fetch-model's own error from its newest failed pod, else the Job's."""
    for pod in _newest_first(pods):
        if field(pod, "status", "phase") != "Failed":
            continue
        term = _failed_terminated(pod)
        if term.get("message") or term.get("reason") or field(pod, "status", "message"):
            return _fetch_error({"message": field(pod, "status", "message"), **term})
    cond = condition_of(job, "Failed") or {}
    return Failure(DOWNLOAD_FAILED, short(f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}"))
