"""When an apply may be skipped: the live child has every desired field and the hash of this manifest."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubediffusion.operator.applied import APPLIED_HASH, covers, stamped, up_to_date

DESIRED: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "im-m", "namespace": "ns", "labels": {"a": "1"}},
    "spec": {"selector": {"m": "x"}, "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]},
}


def live_of(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores after applying ``stamped(desired)``: defaults and status added."""
    live = copy.deepcopy(stamped(desired))
    live["metadata"].update(uid="u1", resourceVersion="7", annotations={**live["metadata"]["annotations"], "x": "y"})
    live["spec"].update(clusterIP="10.96.0.9", type="ClusterIP")
    live["spec"]["ports"][0]["protocol"] = "TCP"
    live["status"] = {"loadBalancer": {}}
    return live


def test_a_child_as_applied_with_server_defaults_is_up_to_date() -> None:
    assert up_to_date(DESIRED, live_of(DESIRED))
    assert APPLIED_HASH not in DESIRED["metadata"].get("annotations", {}), "the manifest itself is not changed"


def test_a_missing_child_is_not_up_to_date() -> None:
    assert not up_to_date(DESIRED, None)


@pytest.mark.parametrize(
    "edit",
    [
        lambda live: live["spec"]["selector"].update(m="wrong"),  # someone changed a value we set
        lambda live: live["spec"]["selector"].pop("m"),  # ... or removed it
        lambda live: live["metadata"]["labels"].pop("a"),
        lambda live: live["spec"]["ports"].append({"name": "extra", "port": 1}),  # an atomic list grew
        lambda live: live["spec"]["ports"][0].update(port="8000"),  # same text, another type
        lambda live: live["metadata"]["annotations"].pop(APPLIED_HASH),  # applied by an older operator
    ],
    ids=["value", "removed", "label", "list-length", "type", "no-hash"],
)
def test_drift_of_a_field_we_apply_is_not_up_to_date(edit: Any) -> None:
    live = live_of(DESIRED)
    edit(live)
    assert not up_to_date(DESIRED, live)


def test_a_field_dropped_from_the_manifest_is_applied_so_the_api_server_removes_it() -> None:
    # Everything still desired is there (the live object even has more): only the hash tells that the
    # last apply had a field this one has not, which server-side apply removes when it is applied.
    before = copy.deepcopy(DESIRED)
    before["spec"]["sessionAffinity"] = "ClientIP"
    live = live_of(before)
    assert covers(live, DESIRED)
    assert not up_to_date(DESIRED, live)


def test_stamping_is_stable_and_keeps_other_annotations() -> None:
    desired = copy.deepcopy(DESIRED)
    desired["metadata"]["annotations"] = {"kubediffusion.io/cache-key": "k"}
    once, twice = stamped(desired), stamped(copy.deepcopy(desired))
    assert once == twice and once["metadata"]["annotations"]["kubediffusion.io/cache-key"] == "k"
    desired["spec"]["selector"]["m"] = "y"
    assert stamped(desired)["metadata"]["annotations"][APPLIED_HASH] != once["metadata"]["annotations"][APPLIED_HASH]


def test_covers_compares_lists_item_by_item_and_scalars_strictly() -> None:
    assert covers({"a": [{"x": 1, "y": 2}], "b": True}, {"a": [{"x": 1}], "b": True})
    assert not covers({"a": [{"x": 1}, {"x": 2}]}, {"a": [{"x": 2}, {"x": 1}]})
    assert not covers({"b": 1}, {"b": True}) and not covers({"b": None}, {"b": False})
    assert not covers({"a": "x"}, {"a": {"b": 1}}) and not covers({"a": {"b": 1}}, {"a": ["b"]})
