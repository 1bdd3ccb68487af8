from __future__ import annotations

import pytest

from kubediffusion.api.errors import ModelNotFoundError, NotFoundError
from kubediffusion.router.routing import ModelEntry, RoutingTable


def entry(name: str, *aliases: str, default: bool = False, namespace: str = "") -> ModelEntry:
    return ModelEntry(name=name, aliases=aliases, default=default, namespace=namespace)


def test_model_is_found_by_name_and_by_alias() -> None:
    table = RoutingTable([entry("sdxl-turbo", "dall-e-2", "fast"), entry("flux")])
    assert table.resolve("sdxl-turbo").name == "sdxl-turbo"
    assert table.resolve("dall-e-2").name == "sdxl-turbo"
    assert table.resolve("fast").name == "sdxl-turbo"
    assert table.resolve("flux").name == "flux"


def test_no_model_named_goes_to_the_default_model() -> None:
    table = RoutingTable([entry("a"), entry("b", default=True), entry("c")])
    assert table.resolve(None).name == "b"


def test_a_single_model_is_the_default_even_unmarked() -> None:
    assert RoutingTable([entry("only")]).resolve(None).name == "only"


def test_several_models_and_no_default_is_404_for_unnamed_requests() -> None:
    with pytest.raises(NotFoundError) as info:
        RoutingTable([entry("a"), entry("b")]).resolve(None)
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_unknown_model_raises_model_not_found() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        RoutingTable([entry("a")]).resolve("dall-e-3")
    assert info.value.status_code == 404
    assert info.value.envelope()["error"]["code"] == "model_not_found"


def test_a_name_beats_another_models_alias_and_alias_clashes_are_deterministic() -> None:
    table = RoutingTable([entry("b", "a", "shared"), entry("a"), entry("c", "shared")])
    assert table.resolve("a").name == "a"
    assert table.resolve("shared").name == "b"  # sorted by name: b's alias registered first


def test_several_defaults_pick_the_first_by_name() -> None:
    assert RoutingTable([entry("z", default=True), entry("m", default=True)]).resolve(None).name == "m"


def test_equal_inputs_make_equal_tables_whatever_the_order() -> None:
    assert RoutingTable([entry("a"), entry("b")]) == RoutingTable([entry("b"), entry("a")])
    assert RoutingTable([entry("a")]) != RoutingTable([entry("a", "x")])


def test_describe_has_the_openai_model_shape_and_metadata() -> None:
    described = ModelEntry(name="tiny", endpoints=("http://x:1", "http://y:1"), aliases=("dall-e-2",)).describe()
    assert {"id": "tiny", "object": "model", "owned_by": "kubediffusion"}.items() <= described.items()
    assert isinstance(described["created"], int)
    assert described["aliases"] == ["dall-e-2"] and described["readyReplicas"] == 2
    assert described["limits"]["maxN"] >= 1 and "size" in described["defaults"]
