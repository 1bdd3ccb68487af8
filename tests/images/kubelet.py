"""Run a container of a Kubernetes pod spec with podman, the way a kubelet would.

The images tier starts the images from the pod specs the chart renders and the operator builds, not
from hand-written flags, so a change to either (a new volume, a security setting, an env variable) is
what the image is tested against. :func:`run_args` is pure (unit-tested in tests/unit/docker); what
it cannot know (a PersistentVolumeClaim's or a Secret's contents) the caller supplies as host
directories, prepared by :func:`prepare_volume` with the ownership and modes a kubelet gives them.

What maps to what:

- ``runAsUser``/``runAsGroup`` -> ``--user``, ``fsGroup`` -> ``--group-add`` (and volume ownership)
- ``readOnlyRootFilesystem`` -> ``--read-only`` without podman's own writable /tmp, /run, /var/tmp
- ``allowPrivilegeEscalation: false`` -> ``no-new-privileges``; ``capabilities`` -> ``--cap-drop/--cap-add``
- ``seccompProfile: RuntimeDefault`` -> podman's default profile (the container runtime's default)
- ``emptyDir`` -> a tmpfs (``medium: Memory`` at /dev/shm -> ``--shm-size``); PVC, Secret and
  ConfigMap volumes -> bind mounts of the host directories given, read-only where Kubernetes would be
- ``resources.limits.memory`` -> ``--memory``; container ports -> published on 127.0.0.1 (any free port)
- ``command``/``args`` -> ``--entrypoint`` and the arguments, with Kubernetes' rules
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Manifest = dict[str, Any]

TERMINATION_LOG = "/dev/termination-log"

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("2Gi", "512Mi", "1G", 1024) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(quantity))
    if match is None:
        raise ValueError(f"unsupported quantity {quantity!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def container(pod: Manifest, name: str) -> Manifest:
    found = [c for c in pod["containers"] if c["name"] == name]
    if len(found) != 1:
        raise ValueError(f"pod has no container {name!r} (has {[c['name'] for c in pod['containers']]})")
    spec: Manifest = found[0]
    return spec


def _security_args(pod: Manifest, spec: Manifest) -> list[str]:
    psc = pod.get("securityContext") or {}
    sc = spec.get("securityContext") or {}
    args: list[str] = []
    user, group = sc.get("runAsUser", psc.get("runAsUser")), sc.get("runAsGroup", psc.get("runAsGroup"))
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and user in (None, 0):
        # A kubelet would look at the image's USER; this tier wants the spec to say who runs.
        raise ValueError("runAsNonRoot without a non-zero runAsUser")
    if user is not None:
        args += ["--user", str(user) if group is None else f"{user}:{group}"]
    if psc.get("fsGroup") is not None:
        args += ["--group-add", str(psc["fsGroup"])]
    if sc.get("privileged"):
        raise ValueError("privileged containers are not run by this tier")
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = sc.get("capabilities") or {}
    for cap in capabilities.get("drop") or []:
        args += ["--cap-drop", cap]
    for cap in capabilities.get("add") or []:
        args += ["--cap-add", cap]
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise ValueError(f"seccompProfile {seccomp} is not supported here")
    return args


def _env_args(spec: Manifest, env: Mapping[str, str]) -> list[str]:
    values: dict[str, str] = {}
    for item in spec.get("env") or []:
        if "value" in item:
            values[item["name"]] = str(item["value"])
        elif item["name"] not in env:
            raise ValueError(f"env {item['name']} comes from {item.get('valueFrom')}: give its value")
    values.update(env)
    return [arg for name, value in values.items() for arg in ("--env", f"{name}={value}")]


def _volume_args(pod: Manifest, spec: Manifest, host_paths: Mapping[str, Path]) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    args: list[str] = []
    for mount in spec.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            empty_dir = volume["emptyDir"] or {}
            size = empty_dir.get("sizeLimit")
            if path == "/dev/shm" and empty_dir.get("medium") == "Memory":
                args += ["--shm-size", str(quantity_bytes(size)) if size else "64m"]
                continue
            options = f"type=tmpfs,destination={path},tmpfs-mode=0777"
            args += ["--mount", options + (f",tmpfs-size={quantity_bytes(size)}" if size else "")]
            continue
        if not {"persistentVolumeClaim", "secret", "configMap"} & set(volume):
            raise ValueError(f"volume {mount['name']}: {sorted(volume)} is not supported here")
        if mount["name"] not in host_paths:
            raise ValueError(f"volume {mount['name']} ({path}) needs a host directory")
        source = host_paths[mount["name"]] / mount.get("subPath", "")
        read_only = (
            mount.get("readOnly", False)
            or (volume.get("persistentVolumeClaim") or {}).get("readOnly", False)
            or "secret" in volume
            or "configMap" in volume
        )
        args += ["--mount", f"type=bind,source={source},destination={path}" + (",ro" if read_only else "")]
    return args


def run_args(
    pod: Manifest,
    name: str,
    *,
    host_paths: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    termination_log: Path | None = None,
) -> list[str]:
    """``podman run`` arguments (after ``run``, image and arguments included) for container ``name``.

    ``host_paths``: volume name -> host directory for PVC, Secret and ConfigMap volumes. ``env``: values
    for ``valueFrom`` variables, and overrides (the only way a test departs from the spec). A kubelet
    mounts a file at the termination message path: ``termination_log`` is that file.
    """
    spec = container(pod, name)
    args = _security_args(pod, spec)
    args += _env_args(spec, env or {})
    args += _volume_args(pod, spec, host_paths or {})
    if termination_log is not None:
        destination = spec.get("terminationMessagePath", TERMINATION_LOG)
        args += ["--mount", f"type=bind,source={termination_log},destination={destination}"]
    memory = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    if memory is not None:
        args += ["--memory", str(quantity_bytes(memory))]
    for port in spec.get("ports") or []:
        args += ["--publish", f"127.0.0.1::{port['containerPort']}"]
    command: Sequence[str] | None = spec.get("command")
    if command is not None:
        # Kubernetes: command replaces the image's ENTRYPOINT, and the image's CMD is dropped.
        args += ["--entrypoint", json.dumps(list(command))]
    return [*args, spec["image"], *(spec.get("args") or [])]


def prepare_volume(pod: Manifest, name: str, host_dir: Path, files: Mapping[str, str] | None = None) -> Path:
    """Make ``host_dir`` what a kubelet would mount for volume ``name`` of ``pod``.

    Secret/ConfigMap: ``files`` (key -> content) written as the volume's items, owned by root with the
    pod's fsGroup as group and the volume's defaultMode. PersistentVolumeClaim: an empty directory the
    fsGroup may write (setgid, group-writable), as a kubelet leaves a fresh volume.
    """
    (volume,) = [v for v in pod.get("volumes") or [] if v["name"] == name]
    group = (pod.get("securityContext") or {}).get("fsGroup", 0)
    host_dir.mkdir(parents=True, exist_ok=True)
    source = volume.get("secret") or volume.get("configMap")
    if source is not None:
        items = {item["key"]: item["path"] for item in source.get("items") or []}
        mode = source.get("defaultMode", 0o644)
        for key, content in (files or {}).items():
            target = host_dir / items.get(key, key)
            target.write_text(content)
            os.chown(target, 0, group)
            target.chmod(mode)
        host_dir.chmod(0o755)
    elif "persistentVolumeClaim" in volume:
        os.chown(host_dir, 0, group)
        host_dir.chmod(0o2775 if group else 0o777)
    else:
        raise ValueError(
            f"volume {name}: only Secret, ConfigMap and PersistentVolumeClaim volumes have host directories"
        )
    return host_dir
