"""Discovery's pure parts: the static file and the Kubernetes objects -> routing table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubediffusion.router.discovery import StaticDiscovery, parse_static_config
from kubediffusion.router.kube_discovery import KubernetesDiscovery, build_table, model_entry, slice_endpoints


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


def slice_(
    service: str,
    *endpoints: dict[str, Any],
    ns: str = "default",
    name: str = "s1",
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": ports if ports is not None else [{"name": "http", "port": 8000}],
    }


def test_slice_keeps_ready_endpoints_on_the_http_port() -> None:
    obj = slice_(
        "im-tiny",
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"]},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": True, "terminating": True}},
        ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
    )
    assert slice_endpoints(obj) == ("im-tiny", ("http://10.0.0.1:8000", "http://10.0.0.3:8000"))


def test_slice_ipv6_and_missing_port() -> None:
    assert slice_endpoints(slice_("im-x", {"addresses": ["fd00::1"]}, address_type="IPv6"))[1] == (
        "http://[fd00::1]:8000",
    )
    assert slice_endpoints(slice_("im-x", {"addresses": ["10.0.0.1"]}, ports=[]))[1] == ()


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
    from kubediffusion.operator.spec import TINY_DEFAULTS, TINY_LIMITS

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


def test_table_joins_models_with_their_services_slices_in_the_same_namespace() -> None:
    tiny = {"source": {"tiny": {}}}
    models = {("a", "tiny"): imagemodel("tiny", tiny, ns="a"), ("b", "other"): imagemodel("other", tiny, ns="b")}
    slices = {
        ("a", "s1"): slice_endpoints(slice_("im-tiny", {"addresses": ["10.0.0.1"]}, ns="a")),
        ("a", "s2"): slice_endpoints(slice_("im-tiny", {"addresses": ["10.0.0.2"]}, ns="a", name="s2")),
        ("b", "s3"): slice_endpoints(slice_("im-tiny", {"addresses": ["10.0.0.9"]}, ns="b", name="s3")),
    }
    table = build_table(models, slices)
    assert table.resolve("tiny").endpoints == ("http://10.0.0.1:8000", "http://10.0.0.2:8000")
    assert table.resolve("other").endpoints == ()


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
