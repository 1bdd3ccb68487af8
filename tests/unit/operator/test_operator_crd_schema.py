"""The CRD file without a cluster: structure, printer columns, and no drift from the typed spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from kubediffusion.imagemodel.engine import Engine, EnvVar
from kubediffusion.imagemodel.pipelines import Adapter, Component, Components, Safety, SchedulerConfig
from kubediffusion.imagemodel.resource import API_VERSION, KIND, PLURAL
from kubediffusion.imagemodel.sources import ExtraSource, HuggingFaceSource, PvcSource
from kubediffusion.imagemodel.spec import Autoscaling, ImageModelSpec
from kubediffusion.imagemodel.wire import KeyRef
from tests.support.examples import image_model, image_model_examples

ROOT = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((ROOT / "crds" / "imagemodel.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = image_model_examples()


def test_names_follow_the_contract() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{PLURAL}.kubediffusion.io"
    assert (names["kind"], names["plural"], names["shortNames"]) == (KIND, PLURAL, ["im"])
    assert CRD["spec"]["scope"] == "Namespaced"
    assert f"{CRD['spec']['group']}/{VERSION['name']}" == API_VERSION
    assert VERSION["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert list(columns) == ["Source", "Ready", "Phase", "Endpoint", "Age"]
    assert columns["Age"] == ".metadata.creationTimestamp"


def _properties(schema: dict[str, Any]) -> set[str]:
    return set(schema.get("properties", {}))


def _aliases(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ((), ImageModelSpec),
        (("source",), ImageModelSpec.model_fields["source"].annotation),
        (("resources",), ImageModelSpec.model_fields["resources"].annotation),
        (("cache",), ImageModelSpec.model_fields["cache"].annotation),
        (("serving",), ImageModelSpec.model_fields["serving"].annotation),
        (("autoscaling",), Autoscaling),
        (("engine",), Engine),
        (("engine", "credentialsSecretRef"), KeyRef),
        (("engine", "workflowConfigMapRef"), KeyRef),
        (("engine", "env", "items"), EnvVar),
        (("adapters", "items"), Adapter),
        (("adapters", "items", "source"), ExtraSource),
        (("adapters", "items", "source", "huggingface"), HuggingFaceSource),
        (("adapters", "items", "source", "pvc"), PvcSource),
        (("scheduler",), SchedulerConfig),
        (("components",), Components),
        (("components", "unet"), Component),
        (("components", "transformer"), Component),
        (("components", "vae", "source"), ExtraSource),
        (("safety",), Safety),
    ],
)
def test_schema_and_typed_spec_have_the_same_fields(path: tuple[str, ...], model: Any) -> None:
    schema = SCHEMA["properties"]["spec"]
    for key in path:
        schema = schema["properties"][key] if key != "items" else schema["items"]
    assert _properties(schema) == _aliases(model)


@pytest.mark.parametrize("field", ["defaults", "limits"])
def test_shared_generation_models_match_the_schema(field: str) -> None:
    from kubediffusion.api.limits import GenerationDefaults, GenerationLimits

    model = GenerationDefaults if field == "defaults" else GenerationLimits
    assert _properties(SCHEMA["properties"]["spec"]["properties"][field]) == _aliases(model)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    doc = image_model(path)
    jsonschema.validate(doc, SCHEMA)  # the OpenAPI part; CEL rules are checked by the cluster tests
    ImageModelSpec.from_body(doc)


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ((), "ImageModelStatus"),
        (("cache",), "CacheStatus"),
        (("cache", "pending"), "CacheCopy"),
        (("cache", "retiring"), "CacheCopy"),
        (("autoscaling",), "AutoscalingStatus"),
        (("lastFailure",), "LastFailure"),
        (("conditions", "items"), "Condition"),
    ],
)
def test_schema_and_typed_status_have_the_same_fields(path: tuple[str, ...], model: str) -> None:
    # The API server prunes a status field its schema does not declare, silently: a wire name of the
    # typed status that is not in the schema would never be stored.
    from kubediffusion.imagemodel import status

    schema = SCHEMA["properties"]["status"]
    for key in path:
        schema = schema["properties"][key] if key != "items" else schema["items"]
    assert _properties(schema) == _aliases(getattr(status, model))


def test_schema_and_typed_status_have_the_same_phases_and_condition_statuses() -> None:
    from kubediffusion.imagemodel import status

    properties = SCHEMA["properties"]["status"]["properties"]
    assert properties["phase"]["enum"] == list(get_args(status.Phase))
    condition_status = status.Condition.model_fields["status"].annotation
    assert properties["conditions"]["items"]["properties"]["status"]["enum"] == list(get_args(condition_status))


def test_spec_enums_match_the_typed_spec() -> None:
    from kubediffusion.imagemodel.spec import AccessMode, CacheMode, SwapMode

    cache = SCHEMA["properties"]["spec"]["properties"]["cache"]["properties"]
    assert cache["mode"]["enum"] == list(get_args(CacheMode))
    assert cache["swap"]["enum"] == list(get_args(SwapMode))
    assert cache["accessMode"]["enum"] == list(get_args(AccessMode))


def test_the_scale_subresource_paths_exist_in_the_schema() -> None:
    # A path the schema does not declare would be pruned: /scale would then always read 0.
    properties = SCHEMA["properties"]
    assert properties["spec"]["properties"]["replicas"]["type"] == "integer"
    assert properties["status"]["properties"]["replicas"]["type"] == "integer"
    assert properties["status"]["properties"]["selector"]["type"] == "string"


def test_pipeline_rules_match_the_model_servers() -> None:
    # One definition of a valid adapter name, scale and scheduler name: the CRD repeats the server's.
    from kubediffusion.api.pipelines import (
        ADAPTER_NAME_PATTERN,
        MAX_ADAPTER_SCALE,
        MAX_ADAPTERS,
        SCHEDULER_NAME_PATTERN,
    )

    spec = SCHEMA["properties"]["spec"]["properties"]
    adapters = spec["adapters"]
    assert adapters["maxItems"] == MAX_ADAPTERS
    assert (adapters["x-kubernetes-list-type"], adapters["x-kubernetes-list-map-keys"]) == ("map", ["name"])
    item = adapters["items"]["properties"]
    assert item["name"]["pattern"] == ADAPTER_NAME_PATTERN
    assert (item["defaultScale"]["minimum"], item["defaultScale"]["maximum"]) == (-MAX_ADAPTER_SCALE, MAX_ADAPTER_SCALE)
    assert spec["scheduler"]["properties"]["name"]["pattern"] == "^$|" + SCHEDULER_NAME_PATTERN
    assert spec["scheduler"]["properties"]["allowed"]["items"]["pattern"] == SCHEDULER_NAME_PATTERN
    assert spec["safety"]["properties"]["action"]["enum"] == ["reject", "blur"]
