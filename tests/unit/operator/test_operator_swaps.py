"""Weight swaps through the reconcile (in-memory API server): a new source downloads beside the serving copy,
the pods roll to it once it is complete, the old copy is pruned once they have left it."""

from __future__ import annotations

import json
from typing import Any

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.imagemodel.status import ImageModelStatus
from kubediffusion.operator.reconcile import Outcome, reconcile
from kubediffusion.operator.settings import OperatorSettings
from tests.unit.operator.fakekube import FakeKube

OLD = {"tiny": {"kind": "sd"}}
NEW = {"tiny": {"kind": "sdxl"}}


def key(source: dict[str, Any]) -> str:
    return ImageModelSpec.from_body({"spec": {"source": source}}).source.cache_key()


def body(source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    meta = {"name": "m", "namespace": "ns", "uid": "uid-m", "generation": 1}
    full = {"source": source, "resources": {"gpus": 0}, "replicas": 2, **spec}
    return {"apiVersion": "kubediffusion.io/v1alpha1", "kind": "ImageModel", "metadata": meta, "spec": full}


class World:
    """The in-memory API server plus what the Job controller, kubelet and Deployment controller would do."""

    def __init__(self, model: dict[str, Any]) -> None:
        self.kube = FakeKube(model)

    def reconcile(self) -> Outcome:
        outcome = reconcile(
            self.kube,  # type: ignore[arg-type]
            OperatorSettings(),
            namespace="ns",
            name="m",
            post_event=lambda body, event: None,
            now=lambda: "2026-01-01T00:00:00Z",
        )
        assert outcome is not None
        return outcome

    @property
    def status(self) -> ImageModelStatus:
        return ImageModelStatus.parse(self.kube.objects[("ImageModel", "m")].get("status"))

    def job(self) -> dict[str, Any]:
        return self.kube.objects[("Job", "im-m-cache")]

    def job_args(self) -> list[str]:
        args: list[str] = self.job()["spec"]["template"]["spec"]["containers"][0]["args"]
        return args

    def finish_job(self, summary: dict[str, Any] | None = None, *, failed: bool = False) -> None:
        job = self.job()
        condition = "Failed" if failed else "Complete"
        job["status"] = {
            "conditions": [{"type": condition, "status": "True"}],
            "completionTime": "2026-01-01T00:01:00Z",
        }
        message = json.dumps(
            summary or {"revision": f"rev-{job['metadata']['annotations'][names.CACHE_KEY_ANNOTATION]}"}
        )
        self.kube.objects[("Pod", "job-pod")] = {
            "metadata": {"name": "job-pod", "labels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]}},
            "status": {
                "phase": "Failed" if failed else "Succeeded",
                "containerStatuses": [
                    {"name": "fetch", "state": {"terminated": {"exitCode": 2 if failed else 0, "message": message}}}
                ],
            },
        }

    def deployment(self) -> dict[str, Any]:
        return self.kube.objects[("Deployment", "im-m")]

    def weights(self) -> str:
        env = self.deployment()["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(next(e["value"] for e in env if e["name"] == "KD_INFERENCE_MODEL_DIR"))

    def roll_out(self, *, done: bool) -> None:
        """The Deployment controller: all pods of the current template (done), or old ones still there."""
        dep = self.deployment()
        replicas = dep["spec"]["replicas"]
        dep["metadata"]["generation"] = 5
        dep["status"] = {
            "observedGeneration": 5,
            "replicas": replicas if done else replicas + 1,
            "updatedReplicas": replicas if done else 1,
            "readyReplicas": replicas,
        }

    def change_source(self, source: dict[str, Any], **spec: Any) -> None:
        self.kube.objects[("ImageModel", "m")]["spec"] = body(source, **spec)["spec"]
        self.kube.objects[("ImageModel", "m")]["metadata"]["generation"] += 1


def serving(world: World) -> World:
    world.reconcile()
    world.kube.objects[("PersistentVolumeClaim", "im-m-cache")]["status"] = {"phase": "Bound"}
    world.reconcile()
    world.finish_job()
    world.reconcile()
    world.roll_out(done=True)
    assert world.reconcile().phase == "Ready"
    assert world.weights() == names.cache_dir(key(OLD))
    return world


def test_a_new_source_downloads_beside_the_serving_copy_and_the_pods_roll_only_when_it_is_complete() -> None:
    world = serving(World(body(OLD)))
    old_dir, new_dir = names.cache_dir(key(OLD)), names.cache_dir(key(NEW))
    world.change_source(NEW)
    world.reconcile()  # the old Job (another source) is deleted ...
    outcome = world.reconcile()  # ... and the new one made
    assert world.job_args()[:7] == ["--dest", new_dir, "--termination-log", "/dev/termination-log",
                                    "--prune", "--keep", old_dir]  # fmt: skip
    dep = world.deployment()
    assert dep["spec"]["replicas"] == 2 and world.weights() == old_dir, "the old copy keeps serving"
    cache = world.status.cache
    assert cache is not None and (cache.key, cache.path, cache.revision) == (key(OLD), old_dir, f"rev-{key(OLD)}")
    assert cache.pending is not None and cache.pending.path == new_dir
    ready = world.status.condition("CacheReady")
    assert ready is not None and ready.ok and ready.reason == "Swapping"
    assert world.status.phase == "Ready" and outcome.converging, "polled until the pods roll"

    world.finish_job()
    world.reconcile()
    assert world.weights() == new_dir and world.deployment()["spec"]["replicas"] == 2, "now the pods roll"
    cache = world.status.cache
    assert cache is not None and (cache.key, cache.revision, cache.pending) == (key(NEW), f"rev-{key(NEW)}", None)
    assert cache.retiring is not None and cache.retiring.path == old_dir
    assert "--keep" in world.job_args(), "the old copy stays while old pods may read it"

    world.roll_out(done=False)
    world.reconcile()
    assert world.status.cache is not None and world.status.cache.retiring is not None, "old pods still run"
    world.roll_out(done=True)
    world.reconcile()
    assert world.status.cache is not None and world.status.cache.retiring is None
    assert ("Job", "im-m-cache") not in world.kube.objects, "its keep-list changed: the finished Job is replaced ..."
    world.reconcile()  # ... by one that prunes the old copy (its own is complete: nothing to download)
    assert world.job_args()[:5] == ["--dest", new_dir, "--termination-log", "/dev/termination-log", "--prune"]
    assert (
        "--keep" not in world.job_args() and world.job()["metadata"]["annotations"][names.CACHE_KEEP_ANNOTATION] == ""
    )
    assert world.status.phase == "Ready" and world.weights() == new_dir, "the model serves through the re-run"


def test_no_room_for_a_second_copy_keeps_the_old_one_serving_and_says_so() -> None:
    world = serving(World(body(OLD)))
    world.change_source(NEW)
    world.reconcile()
    world.reconcile()
    error = "the cache volume has 10 bytes free; a new copy ... set spec.cache.swap to scaleToZero"
    world.finish_job({"error": error, "reason": "CacheTooSmallForSwap"}, failed=True)
    outcome = world.reconcile()
    status = world.status
    assert status.phase == "Degraded" and not outcome.converging, "settled until the spec changes"
    for type_ in ("CacheReady", "Ready", "Degraded"):
        cond = status.condition(type_)
        assert cond is not None and cond.reason == "CacheTooSmallForSwap", type_
    available = status.condition("Available")
    assert available is not None and available.ok
    assert status.last_failure is not None and status.last_failure.reason == "CacheTooSmallForSwap"
    assert world.weights() == names.cache_dir(key(OLD)) and world.deployment()["spec"]["replicas"] == 2


def test_scale_to_zero_swaps_remove_the_old_copy_first_and_serve_nothing_meanwhile() -> None:
    world = serving(World(body(OLD)))
    world.change_source(NEW, cache={"swap": "scaleToZero"})
    world.reconcile()
    world.reconcile()
    assert "--keep" not in world.job_args() and "--prune" in world.job_args()
    assert world.deployment()["spec"]["replicas"] == 0 and world.weights() == names.cache_dir(key(NEW))
    assert world.status.phase == "Caching"


def test_a_copy_cached_by_an_older_operator_stays_where_it_is() -> None:
    # Before side-by-side swaps the one copy lived in /models/model; its model is not downloaded again.
    legacy = {"claimName": "im-m-cache", "path": "/models/model", "key": key(OLD), "revision": "r",
              "completedAt": "2025-01-01T00:00:00Z"}  # fmt: skip
    model = body(OLD)
    model["status"] = {"cache": legacy}
    world = World(model)
    world.kube.objects[("PersistentVolumeClaim", "im-m-cache")] = {"metadata": {"name": "im-m-cache"},
                                                                   "status": {"phase": "Bound"}}  # fmt: skip
    world.reconcile()
    assert world.job_args()[:2] == ["--dest", "/models/model"] and world.weights() == "/models/model"
    assert world.deployment()["spec"]["replicas"] == 2, "served from the cached copy while its Job checks it"
    # Its next source goes into a directory of its own, beside /models/model.
    world.finish_job({"revision": "r"})
    world.reconcile()
    world.change_source(NEW)
    world.reconcile()
    world.reconcile()
    assert world.job_args()[1] == names.cache_dir(key(NEW)) and world.job_args()[5:7] == ["--keep", "/models/model"]
    assert world.weights() == "/models/model"
