"""The operator and a real API server: a model with an http archive adapter gets a cache Job that fetches
the model and then the adapter into the model's copy (same download policy), the adapter's resolved
revision in status.cache.extras, and the model server's KD_INFERENCE_ADAPTERS pointing into that copy."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.operator_fixture import OperatorProcess, create_model, get_model, list_objects, raw
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

LORA = "https://models.example/loras/style-a.tar.gz"


def _terminated(name: str, image: str, message: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    state = {"exitCode": 0, "reason": "Completed", "message": message, "startedAt": now, "finishedAt": now}
    return {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"terminated": state},
    }


def test_the_cache_job_fetches_an_archive_adapter_into_the_copy_and_status_shows_its_revision(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # The Job's pod cannot schedule (no such node), so no fake kubelet runs it: we report what fetch-model
    # writes in each container, as a kubelet would.
    spec = {
        "source": {"url": "https://models.example/sd.tar.gz"},
        "resources": {"gpus": 0, "nodeSelector": {"kubediffusion.io/test": "nowhere"}},
        "cache": {"size": "1Gi"},
        "adapters": [{"name": "style-a", "source": {"url": LORA}, "defaultScale": 0.7}],
        "safety": {"blockedTerms": ["gore"]},
    }
    create_model(api_client, namespace, "lora", spec)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    pod = wait_for(
        lambda: list_objects(api_client, pods_path, "job-name=im-lora-cache"), timeout=30, message="cache Job pod"
    )[0]
    init, main = pod["spec"]["initContainers"], pod["spec"]["containers"]
    assert [c["name"] for c in init] == ["fetch"] and [c["name"] for c in main] == ["adapter-0"]
    model_dest = init[0]["args"][init[0]["args"].index("--dest") + 1]
    args = main[0]["args"]
    assert args[args.index("--dest") + 1] == f"{model_dest}/adapters/style-a"
    assert args[args.index("--content") + 1] == "weights" and args[args.index("--url") + 1] == LORA
    assert args[args.index("--max-bytes") + 1] == "1Gi", "the archive limits apply to the adapter too"

    image = main[0]["image"]
    status = {
        "phase": "Succeeded",
        "initContainerStatuses": [_terminated("fetch", image, json.dumps({"revision": "sha256:model", "bytes": 9}))],
        "containerStatuses": [_terminated("adapter-0", image, json.dumps({"revision": "sha256:lora", "bytes": 1}))],
    }
    path = f"{pods_path}/{pod['metadata']['name']}/status"
    code, answer = raw(api_client, "PATCH", path, {"status": status}, content_type="application/merge-patch+json")
    assert code == 200, answer

    def fetched() -> dict[str, Any] | None:
        model = get_model(api_client, namespace, "lora") or {}
        cache = (model.get("status") or {}).get("cache") or {}
        return model if cache.get("extras") else None

    model = wait_for(fetched, timeout=60, interval=0.3, message="status.cache.extras from the fetch summaries")
    cache = model["status"]["cache"]
    assert cache["extras"] == {"adapters/style-a": "sha256:lora"} and cache["revision"] == "sha256:model"
    assert cache["path"] == model_dest

    deployment_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/im-lora"
    server = raw(api_client, "GET", deployment_path)[1]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["KD_INFERENCE_MODEL_DIR"] == model_dest
    adapters = json.loads(env["KD_INFERENCE_ADAPTERS"])
    assert adapters == [{"name": "style-a", "path": f"{model_dest}/adapters/style-a", "defaultScale": 0.7}]
    assert json.loads(env["KD_INFERENCE_SAFETY"])["blockedTerms"] == ["gore"]
