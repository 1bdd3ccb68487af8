"""A test-only dynamic volume provisioner: the local control plane has no storage driver.

It plays the part a CSI provisioner plays in a real cluster, so PVCs of the ``standard`` StorageClass
bind and pods that mount them schedule: for each pending claim it creates a hostPath PV pre-bound to the
claim (the real PV controller in kube-controller-manager then binds them), backed by
``<root>/<namespace>/<claim>``; released volumes are deleted with their directory. The e2e pod runner
maps the same directories into the processes it starts, so a cache Job's files are what model pods read.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

STORAGE_CLASS = "standard"
PROVISIONER = "kubediffusion.io/test-hostpath"


def claim_directory(root: Path, namespace: str, claim: str) -> Path:
    return root / namespace / claim


def ensure_storage_class(api_client: client.ApiClient) -> None:
    storage = client.StorageV1Api(api_client)
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }
    try:
        storage.create_storage_class(body)
    except ApiException as exc:
        if exc.status != 409:
            raise


class HostPathProvisioner:
    """Polls claims and volumes; one pass is `reconcile_once`, the thread repeats it until stopped."""

    def __init__(self, api_client: client.ApiClient, root: Path, interval: float = 0.3) -> None:
        self.core = client.CoreV1Api(api_client)
        self.root = root
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-provisioner", daemon=True)

    def start(self) -> HostPathProvisioner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # keep provisioning through transient API errors
                log.exception("provisioner pass failed")
            self._stop.wait(self.interval)

    def reconcile_once(self) -> None:
        for claim in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if claim.status.phase == "Pending" and not claim.spec.volume_name and self._ours(claim):
                self._provision(claim)
        for volume in self.core.list_persistent_volume().items:
            if volume.spec.storage_class_name == STORAGE_CLASS and volume.status.phase == "Released":
                self._delete(volume)

    @staticmethod
    def _ours(claim: Any) -> bool:
        return (claim.spec.storage_class_name or STORAGE_CLASS) == STORAGE_CLASS

    def _provision(self, claim: Any) -> None:
        meta = claim.metadata
        directory = claim_directory(self.root, meta.namespace, meta.name)
        directory.mkdir(parents=True, exist_ok=True)
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta.uid}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": claim.spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "namespace": meta.namespace,
                    "name": meta.name,
                    "uid": meta.uid,
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                },
            },
        }
        try:
            self.core.create_persistent_volume(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _delete(self, volume: Any) -> None:
        host_path = volume.spec.host_path.path if volume.spec.host_path else None
        try:
            self.core.delete_persistent_volume(volume.metadata.name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        if host_path and Path(host_path).is_relative_to(self.root):
            shutil.rmtree(host_path, ignore_errors=True)
