"""Discovery's pure parts: the static file and the Kubernetes objects -> routing table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.core_v1 import Pod

from kubediffusion.imagemodel import names
from kubediffusion.router import kube_discovery
from kubediffusion.router.discovery import StaticDiscovery, parse_static_config
from kubediffusion.router.kube_discovery import (
    POD_SELECTOR,
    Kind,
    KubernetesDiscovery,
    build_table,
    model_entry,
    pod_endpoint,
)


def test_static_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "tiny",
                    "aliases": ["dall-e-2"],
                    "default": True,
                    "endpoints": ["http://127.0.0.1:9001/"],
                    "defaults": {"steps": 2, "size": "64x64"},
                    "limits": {"maxN": 2, "minSize": 32},
                    "presets": {"anime": {"prompt": "{prompt}, anime", "negativePrompt": "photo"}},
                },
                {"name": "other", "endpoints": []},
            ]
        )
    )
    discovery = StaticDiscovery(path)
    assert not discovery.synced
    asyncio.run(discovery.start())
    table = discovery.table()
    assert discovery.synced and len(table) == 2
    tiny = table.resolve("dall-e-2")
    assert tiny.endpoints == ("http://127.0.0.1:9001",) and tiny.defaults.steps == 2
    assert tiny.limits.max_n == 2 and tiny.presets["anime"].negative_prompt == "photo"
    assert table.resolve(None).name == "tiny"


@pytest.mark.parametrize(
    "data", [{"name": "x"}, [{"endpoints": []}], [{"name": "x", "limits": {"maxN": 99}}], [{"name": "x", "typo": 1}]]
)
def test_bad_static_config_says_what_is_wrong(data: Any) -> None:
    with pytest.raises(ValueError):
        parse_static_config(data)


def pod(
    model: str,
    ip: str | None = "127.0.9.1",
    *,
    ready: bool | None = True,
    ns: str = "default",
    name: str = "p1",
    containers: list[dict[str, Any]] | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    """A Pod as the API server sends it, labelled as the operator labels inference pods."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": names.labels(model, "inference")}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    status: dict[str, Any] = {"phase": "Running"}
    if ip is not None:
        status["podIP"] = ip
    if ready is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
    if containers is None:
        containers = [{"name": "inference", "ports": [{"name": "http", "containerPort": 8000}]}]
    return {"metadata": meta, "spec": {"containers": containers}, "status": status}


def test_a_ready_pod_is_an_endpoint_on_its_http_port() -> None:
    assert pod_endpoint(pod("tiny", "127.0.9.1")) == ("tiny", "http://127.0.9.1:8000")


@pytest.mark.parametrize(
    "obj",
    [
        pod("tiny", ready=False),
        pod("tiny", ready=None),  # no conditions yet (just scheduled)
        pod("tiny", ip=None),
        pod("tiny", ip=""),
        pod("tiny", terminating=True),  # still Ready until its kubelet stops it: no new work
    ],
    ids=["unready", "no-conditions", "no-ip", "empty-ip", "terminating"],
)
def test_a_pod_that_must_get_no_requests_is_no_endpoint_but_keeps_its_model(obj: dict[str, Any]) -> None:
    assert pod_endpoint(obj) == ("tiny", None)


def test_the_port_named_http_in_any_container_else_the_only_port_else_8000() -> None:
    sidecar = {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9090}]}
    named = {"name": "inference", "ports": [{"containerPort": 7000}, {"name": "http", "containerPort": 9000}]}
    assert pod_endpoint(pod("x", containers=[sidecar, named]))[1] == "http://127.0.9.1:9000"
    only = {"name": "inference", "ports": [{"containerPort": 7000}]}
    assert pod_endpoint(pod("x", containers=[only]))[1] == "http://127.0.9.1:7000"
    assert pod_endpoint(pod("x", containers=[{"name": "inference"}]))[1] == "http://127.0.9.1:8000"
    two = {"name": "inference", "ports": [{"containerPort": 7000}, {"containerPort": 7001}]}
    assert pod_endpoint(pod("x", containers=[two]))[1] == "http://127.0.9.1:8000"


def test_an_ipv6_pod_address_is_bracketed() -> None:
    assert pod_endpoint(pod("x", "fd00::1"))[1] == "http://[fd00::1]:8000"


def test_the_server_side_selector_keeps_inference_pods_of_any_model_and_drops_cache_pods() -> None:
    # The API server applies the selector; here: that it says what the operator's labels mean.
    def matches(labels: dict[str, str]) -> bool:
        for term in POD_SELECTOR.split(","):
            key, _, value = term.partition("=")
            if key not in labels or (value and labels[key] != value):
                return False
        return True

    assert matches(names.labels("tiny", "inference")) and matches(names.labels("other", "inference", smoke_test=True))
    assert not matches(names.labels("tiny", "cache"))
    assert not matches({names.COMPONENT_LABEL: "inference"})  # no model label: not ours to route
    assert all(matches({**names.selector(model), "extra": "1"}) for model in ("a", "b"))
    assert f"{names.COMPONENT_LABEL}=inference,{names.MODEL_LABEL}" == POD_SELECTOR


def imagemodel(name: str, spec: dict[str, Any], ns: str = "default", ready: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kubediffusion.io/v1alpha1",
        "kind": "ImageModel",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": spec,
        "status": {"readyReplicas": ready},
    }


def test_imagemodel_spec_fields_are_read_and_the_rest_ignored() -> None:
    entry = model_entry(
        imagemodel(
            "sdxl",
            {
                "source": {"huggingface": {"repo": "stabilityai/sdxl-turbo"}},
                "aliases": ["dall-e-2"],
                "default": True,
                "defaults": {"steps": 4, "negativePrompt": "blurry"},
                "limits": {"maxSize": 1024},
                "replicas": 2,
            },
            ready=2,
        ),
        (),
    )
    assert entry is not None
    assert entry.aliases == ("dall-e-2",) and entry.default and entry.defaults.negative_prompt == "blurry"
    assert entry.defaults.size == "1024x1024"  # unset fields keep the operator's defaults
    assert entry.ready_replicas == 2 and entry.created == 1767323045 and entry.namespace == "default"


def test_replicas_scale_to_zero_and_phase_are_read_for_holding_requests() -> None:
    autoscaled = {"source": {"tiny": {}}, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    unset = model_entry({**imagemodel("a", autoscaled, ready=0), "status": {"phase": "Pending"}}, ())
    at_zero = model_entry(imagemodel("b", {**autoscaled, "replicas": 0}, ready=0), ())
    woken = model_entry(imagemodel("c", {**autoscaled, "replicas": 1}, ready=0), ())
    fixed = model_entry(imagemodel("d", {"source": {"tiny": {}}, "replicas": 0}, ready=0), ())
    floor = model_entry(imagemodel("e", {"source": {"tiny": {}}, "autoscaling": {"maxReplicas": 2}}), ())
    failed = model_entry({**imagemodel("f", autoscaled, ready=0), "status": {"phase": "Failed"}}, ())
    assert unset is not None and (unset.desired_replicas, unset.scales_to_zero, unset.phase) == (0, True, "Pending")
    assert unset.at_zero and unset.holds_requests
    assert at_zero is not None and at_zero.at_zero and at_zero.holds_requests
    assert woken is not None and not woken.at_zero and woken.holds_requests  # waking: still held, not woken again
    assert fixed is not None and fixed.at_zero and not fixed.scales_to_zero and not fixed.holds_requests
    assert floor is not None and floor.desired_replicas == 1 and not floor.scales_to_zero
    assert failed is not None and failed.phase == "Failed" and not failed.holds_requests


def test_tiny_source_gets_the_same_defaults_and_limits_as_its_pods() -> None:
    from kubediffusion.imagemodel.tiny import TINY_DEFAULTS, TINY_LIMITS

    entry = model_entry(imagemodel("tiny", {"source": {"tiny": {}}}), ())
    assert entry is not None and entry.defaults == TINY_DEFAULTS and entry.limits == TINY_LIMITS


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"source": {"tiny": {}}, "limits": {"maxN": 500}},
        {"source": {"tiny": {}}, "defaults": {"size": "2048x2048"}},
    ],
)
def test_imagemodel_with_an_unusable_spec_is_skipped(spec: dict[str, Any]) -> None:
    assert model_entry(imagemodel("bad", spec), ()) is None


def test_table_joins_models_with_their_pods_by_namespace_and_model_label() -> None:
    tiny = {"source": {"tiny": {}}}
    models = {("a", "tiny"): imagemodel("tiny", tiny, ns="a"), ("b", "other"): imagemodel("other", tiny, ns="b")}
    pods = {
        ("a", "p1"): pod_endpoint(pod("tiny", "127.0.9.2", ns="a", name="p1")),
        ("a", "p2"): pod_endpoint(pod("tiny", "127.0.9.1", ns="a", name="p2")),
        ("a", "p3"): pod_endpoint(pod("tiny", "127.0.9.3", ns="a", name="p3", ready=False)),
        ("a", "p4"): pod_endpoint(pod("other", "127.0.9.4", ns="a", name="p4")),  # other's name, wrong namespace
        ("b", "p5"): pod_endpoint(pod("tiny", "127.0.9.9", ns="b", name="p5")),  # tiny's name, wrong namespace
        ("b", "p6"): pod_endpoint(pod("other", "127.0.9.6", ns="b", name="p6", terminating=True)),
    }
    table = build_table(models, pods)
    assert table.resolve("tiny").endpoints == ("http://127.0.9.1:8000", "http://127.0.9.2:8000")
    assert table.resolve("other").endpoints == ()
    assert len(build_table({}, pods)) == 0  # pods without an ImageModel route nowhere


class ScriptedDiscovery(KubernetesDiscovery):
    """The watch loop with the API calls replaced by a script: what happens on 410 and on errors. Each
    watch raises the script's next step; when the script is done it is cancelled, as ``stop`` does."""

    def __init__(self, script: list[BaseException]) -> None:
        self.waits: list[float] = []

        async def record(seconds: float) -> None:
            self.waits.append(seconds)

        super().__init__(None, watch_timeout_seconds=1, sleep=record)  # type: ignore[arg-type]
        self.script = script
        self.calls: list[str] = []

    async def _relist(self, kind: Kind) -> str:
        self.calls.append("list")
        return "1"

    async def _watch(self, kind: Kind, version: str) -> None:
        self.calls.append("watch")
        raise self.script.pop(0) if self.script else asyncio.CancelledError()


class Http410(Exception):
    """A 410 as the watch request's own HTTP status (an HTTPStatusError of lightkube's HTTP client)."""

    response = SimpleNamespace(status_code=410)


async def test_watch_410_relists_at_once_and_errors_relist_after_a_backoff() -> None:
    gone = ApiError(status=Status(code=410, reason="Expired", message="too old resource version"))
    discovery = ScriptedDiscovery([gone, Http410(), ConnectionError("reset"), ConnectionError("reset")])
    with pytest.raises(asyncio.CancelledError):
        await discovery._follow("models")
    assert discovery.calls == ["list", "watch"] * 5
    assert discovery.waits == [0.5, 0.5]  # one backoff per error (each after a good relist), none for 410


async def test_errors_in_a_row_back_off_longer() -> None:
    class FailingList(ScriptedDiscovery):
        async def _relist(self, kind: Kind) -> str:
            self.calls.append("list")
            if len(self.calls) > 4:
                raise asyncio.CancelledError
            raise ConnectionError("refused")

    discovery = FailingList([])
    with pytest.raises(asyncio.CancelledError):
        await discovery._follow("pods")
    assert discovery.waits == [0.5, 1.0, 2.0, 5.0]


async def test_stop_cancels_the_watch_loops_at_once() -> None:
    watching, cancelled = asyncio.Event(), asyncio.Event()

    class Blocked(ScriptedDiscovery):
        async def _watch(self, kind: Kind, version: str) -> None:
            watching.set()
            try:
                await asyncio.sleep(3600)  # a watch with nothing to say
            except asyncio.CancelledError:
                cancelled.set()
                raise

    discovery = Blocked([])
    await discovery.start()
    await asyncio.wait_for(watching.wait(), 5)
    await asyncio.wait_for(discovery.stop(), 5)
    assert cancelled.is_set() and discovery.calls.count("list") == 2  # both kinds listed once
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("discovery-")]


class SilentClient:
    """A watch whose connection dies without a word after one event: it neither ends nor fails."""

    def __init__(self) -> None:
        self.watched_from: list[str] = []

    def watch(self, res: Any, *, resource_version: str, **kwargs: Any) -> AsyncIterator[tuple[str, Any]]:
        self.watched_from.append(resource_version)

        async def events() -> AsyncIterator[tuple[str, Any]]:
            obj = Pod.from_dict(pod("tiny", name=f"p{len(self.watched_from)}"))
            obj.metadata.resourceVersion = str(10 + len(self.watched_from))
            yield "ADDED", obj
            await asyncio.sleep(3600)

        return events()


async def test_a_watch_that_outlives_its_server_timeout_is_cut_and_rewatched_from_the_last_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube_discovery, "WATCH_GRACE_SECONDS", -0.9)  # rounds of 0.1 s for a 1 s server timeout
    silent = SilentClient()
    discovery = KubernetesDiscovery(silent, watch_timeout_seconds=1)  # type: ignore[arg-type]
    watching = asyncio.create_task(discovery._watch("pods", "5"))
    try:
        for _ in range(100):
            if len(silent.watched_from) >= 3:
                break
            await asyncio.sleep(0.05)
    finally:
        watching.cancel()
    assert silent.watched_from[:3] == ["5", "11", "12"]  # each round from the version the last one reached
    assert set(discovery._pods) >= {("default", "p1"), ("default", "p2")}
