"""LoRA adapters in the routing table: ``<model>:<adapter>`` resolves to the model (by name, alias or repo
id) and is sent on as a name the model's pods answer to; adapters come from ImageModels and static entries."""

from __future__ import annotations

from typing import Any

import pytest

from kubediffusion.api.errors import ModelNotFoundError
from kubediffusion.imagemodel.spec import ImageModelSpec
from kubediffusion.router.adapters import spec_adapters
from kubediffusion.router.discovery import parse_static_config
from kubediffusion.router.kube_discovery import model_entry
from kubediffusion.router.routing import ModelEntry, RoutingTable
from kubediffusion.router.tenants import parse_tenants

TINY = ModelEntry(
    name="tiny", aliases=("dall-e-2",), repo="Org/Tiny-SD", adapters={"style-a": 1.0, "pixel": 0.5}, default=True
)
BARE = ModelEntry(name="bare", adapters={})
UNKNOWN = ModelEntry(name="static")  # a static entry without an adapters list
TABLE = RoutingTable([TINY, BARE, UNKNOWN])


@pytest.mark.parametrize("asked", ["tiny:style-a", "dall-e-2:style-a", "org/tiny-sd:style-a"])
def test_an_adapter_resolves_to_its_model_by_name_alias_or_repo_and_is_served_by_the_models_name(asked: str) -> None:
    target = TABLE.target(asked)
    assert target.entry is TINY and target.adapter == "style-a"
    assert target.served_name == "tiny:style-a"


def test_the_model_itself_and_the_default_model_have_no_adapter() -> None:
    assert TABLE.target("tiny").adapter is None and TABLE.target("tiny").served_name == "tiny"
    assert TABLE.target(None).entry is TINY and TABLE.target(None).adapter is None
    assert TABLE.target("dall-e-2").served_name == "tiny"


@pytest.mark.parametrize("asked", ["tiny:nope", "bare:style-a", "tiny:", "missing:style-a", "tiny:style-a:x"])
def test_an_adapter_the_model_lacks_is_the_same_404_as_a_missing_model(asked: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        TABLE.target(asked)
    error = info.value.envelope()["error"]
    assert info.value.status_code == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"] == f"The model '{asked}' does not exist or you do not have access to it."


def test_a_model_whose_adapters_are_unknown_passes_any_well_formed_adapter_name_to_its_pods() -> None:
    assert TABLE.target("static:anything").served_name == "static:anything"
    with pytest.raises(ModelNotFoundError):
        TABLE.target("static:Not.A.Name")


def test_a_model_named_with_a_colon_wins_over_an_adapter_reading() -> None:
    table = RoutingTable([ModelEntry(name="a:b"), ModelEntry(name="a", adapters={"b": 1.0})])
    assert table.target("a:b").entry.name == "a:b" and table.target("a:b").adapter is None


def test_plain_resolve_knows_no_adapters() -> None:
    with pytest.raises(ModelNotFoundError):
        TABLE.resolve("tiny:style-a")


def test_models_list_each_adapter_after_its_model_in_the_pods_shape() -> None:
    listed = TINY.listing()
    assert [item["id"] for item in listed] == ["tiny", "tiny:style-a", "tiny:pixel"]
    assert listed[0]["adapters"] == ["style-a", "pixel"]
    assert listed[2] == {
        "id": "tiny:pixel",
        "object": "model",
        "created": 0,
        "owned_by": "kubediffusion",
        "parent": "tiny",
        "adapter": {"name": "pixel", "defaultScale": 0.5},
        "readyReplicas": 0,
    }
    assert UNKNOWN.listing() == [UNKNOWN.describe()] and UNKNOWN.describe()["adapters"] == []
    assert TABLE.target("static:x").describe()["adapter"] == {"name": "x", "defaultScale": None}


def test_static_config_adapters_are_optional_and_checked() -> None:
    table = parse_static_config(
        [
            {"name": "tiny", "adapters": [{"name": "style-a"}, {"name": "pixel", "defaultScale": -0.5}]},
            {"name": "other", "adapters": []},
            {"name": "plain"},
        ]
    )
    assert table.resolve("tiny").adapters == {"style-a": 1.0, "pixel": -0.5}
    assert table.resolve("other").adapters == {} and table.resolve("plain").adapters is None
    for bad in ({"name": "Bad.Name"}, {"name": "a", "defaultScale": 3}, {"name": "a", "source": "x"}):
        with pytest.raises(ValueError, match="static config model #0"):
            parse_static_config([{"name": "tiny", "adapters": [bad]}])


def imagemodel(spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "tiny", "namespace": "ns"}, "spec": spec}


def test_an_imagemodels_adapters_are_read_as_sent_and_a_bad_item_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    spec = {
        "adapters": [
            {"name": "style-a", "source": {"url": "https://x/a.tar"}, "file": "a.safetensors"},
            {"name": "pixel", "source": {"pvc": {"claimName": "c"}}, "defaultScale": 0.7},
            {"name": "Not.A.Name", "source": {}},
            {"name": "style-a", "defaultScale": 2},
        ]
    }
    assert spec_adapters(imagemodel(spec), "ns", "tiny") == {"style-a": 1.0, "pixel": 0.7}
    assert "spec.adapters[2] ignored" in caplog.text
    assert spec_adapters(imagemodel({}), "ns", "tiny") == {}
    assert spec_adapters(imagemodel({"adapters": "x"}), "ns", "tiny") == {}


TINY_SOURCE = {"source": {"tiny": {"kind": "sd"}}}


def test_an_imagemodel_without_adapters_has_none_known() -> None:
    entry = model_entry(imagemodel(TINY_SOURCE), ())
    assert entry is not None and entry.adapters == {}


@pytest.mark.skipif("adapters" not in ImageModelSpec.model_fields, reason="ImageModelSpec has no spec.adapters yet")
def test_an_imagemodels_adapters_reach_its_routing_entry() -> None:
    adapter = {"name": "style-a", "source": {"url": "https://example.com/a.tar.gz"}, "defaultScale": 0.8}
    entry = model_entry(imagemodel({**TINY_SOURCE, "adapters": [adapter]}), ())
    assert entry is not None and entry.adapters == {"style-a": 0.8}


def test_an_allow_list_pattern_naming_an_adapter_matches_nothing_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    book = parse_tenants('tenants: [{name: a, keys: ["k"], models: ["tiny", "tiny:style-a", "other:*"]}]')
    tenant = book.tenants[0]
    assert tenant.allows(TINY) and not tenant.allows(ModelEntry(name="other", adapters={"x": 1.0}))
    assert "tenants.0.models.1: a pattern with ':' matches no model's adapter" in caplog.text
    assert "tenants.0.models.2" in caplog.text
    assert "style-a" not in caplog.text  # the file's text is never echoed
