"""Discovery's pure parts: the static file and the Kubernetes objects -> routing table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubediffusion.imagemodel import names
from kubediffusion.router.discovery import StaticDiscovery, parse_static_config
from kubediffusion.router.kube_discovery import (
    POD_SELECTOR,
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
    import asyncio

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
    """The watch loop with the API calls replaced by a script: what happens on 410 and on errors."""

    def __init__(self, script: list[BaseException | None]) -> None:
        super().__init__(None, watch_timeout_seconds=1)  # type: ignore[arg-type]
        self.script = script
        self.calls: list[str] = []

    def _relist(self, kind: str) -> str:
        self.calls.append("list")
        return "1"

    def _watch(self, kind: str, version: str) -> None:
        self.calls.append("watch")
        step = self.script.pop(0) if self.script else None
        if step is None:
            self._stop.set()
            return
        raise step


def test_watch_410_relists_at_once_and_errors_relist_after_a_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client.exceptions import ApiException

    waits: list[float] = []
    discovery = ScriptedDiscovery([ApiException(status=410, reason="Gone"), ConnectionError("reset"), None])
    monkeypatch.setattr(discovery._stop, "wait", lambda seconds: waits.append(seconds))
    discovery._run("models")
    assert discovery.calls == ["list", "watch", "list", "watch", "list", "watch"]
    assert waits == [0.5]  # one backoff: for the connection error, none for 410
