"""What clients read about the service: publisher/family/version on /v1/models, /v1/metadata, names by
Hugging Face repo id, /openapi.json and /docs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubediffusion.api.limits import GenerationDefaults, GenerationLimits, StylePreset
from kubediffusion.router.discovery import StaticDiscovery, parse_static_config
from kubediffusion.router.kube_discovery import model_entry
from kubediffusion.router.modelinfo import ModelInfo, from_repo
from kubediffusion.router.routing import ModelEntry, RoutingTable
from tests.unit.router.test_router_app import A, B, assert_envelope
from tests.unit.router.test_router_model_sources import imagemodel

SPEC = Path("/work/shared/openai-images-spec.yaml")


@pytest.mark.parametrize(
    ("repo", "publisher", "family", "version"),
    [
        ("stabilityai/sdxl-turbo", "stabilityai", "sdxl", "turbo"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai", "sdxl", "base-1.0"),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5", "sd", "v1-5"),
        ("stabilityai/stable-diffusion-3.5-large", "stabilityai", "sd3.5", "large"),
        ("black-forest-labs/FLUX.1-schnell", "black-forest-labs", "flux.1", "schnell"),
        ("segmind/tiny", "segmind", "tiny", None),
        ("stabilityai/stable-diffusion-xl", "stabilityai", "sdxl", None),
        ("lonely-name", None, "lonely", "name"),
    ],
)
def test_publisher_family_and_version_from_a_hugging_face_repo_id(
    repo: str, publisher: str | None, family: str, version: str | None
) -> None:
    assert from_repo(repo) == ModelInfo(publisher=publisher, family=family, version=version)


def test_explicit_values_win_over_derived_ones_field_by_field() -> None:
    explicit = ModelInfo(family="sdxl-lightning")
    assert explicit.over(from_repo("stabilityai/sdxl-turbo")) == ModelInfo(
        publisher="stabilityai", family="sdxl-lightning", version="turbo"
    )


def test_static_config_takes_a_repo_and_explicit_metadata(tmp_path: Path) -> None:
    table = parse_static_config(
        [
            {"name": "turbo", "repo": "stabilityai/sdxl-turbo", "version": "turbo-v1", "supports": ["generations"]},
            {"name": "plain"},
        ]
    )
    turbo, plain = table.resolve("turbo"), table.resolve("plain")
    assert turbo.info == ModelInfo(publisher="stabilityai", family="sdxl", version="turbo-v1")
    assert turbo.supports == frozenset({"generations"}) and table.resolve("STABILITYAI/sdxl-turbo") is turbo
    assert plain.info == ModelInfo() and plain.repo is None and len(plain.supports) == 4
    with pytest.raises(ValueError):
        parse_static_config([{"name": "x", "supports": ["painting"]}])


def test_an_imagemodel_gets_its_repo_and_metadata_from_the_spec() -> None:
    hub = {"source": {"huggingface": {"repo": "stabilityai/sdxl-turbo"}}}
    entry = model_entry(imagemodel("turbo", hub), ())
    assert entry is not None and entry.repo == "stabilityai/sdxl-turbo"
    assert entry.info == ModelInfo(publisher="stabilityai", family="sdxl", version="turbo")
    tiny = model_entry(imagemodel("tiny", {"source": {"tiny": {}}}), ())
    assert tiny is not None and tiny.info == ModelInfo(publisher="kubediffusion", family="tiny", version="sd")
    url = model_entry(imagemodel("u", {"source": {"url": "https://host/m.tar.gz"}}), ())
    assert url is not None and url.info == ModelInfo() and url.repo is None


def test_explicit_spec_info_is_read_when_the_resource_carries_it() -> None:
    from kubediffusion.router.kube_discovery import explicit_info

    obj = imagemodel("turbo", {"info": {"publisher": "acme", "version": "2"}})
    assert explicit_info(obj, "ns", "turbo") == ModelInfo(publisher="acme", version="2")
    assert explicit_info(imagemodel("x", {"info": {"publisher": 7}}), "ns", "x") == ModelInfo()  # logged, ignored


def test_names_beat_aliases_beat_repo_ids() -> None:
    by_repo = ModelEntry(name="a", repo="org/x")
    named_like_the_repo = ModelEntry(name="org/x")
    aliased = ModelEntry(name="b", aliases=("org/y",))
    repo_y = ModelEntry(name="c", repo="org/y")
    table = RoutingTable([by_repo, named_like_the_repo, aliased, repo_y])
    assert table.resolve("org/x").name == "org/x" and table.resolve("org/y").name == "b"
    assert table.resolve("ORG/X").name == "a"  # case-insensitive only for repo ids


def turbo(**kwargs: Any) -> ModelEntry:
    return ModelEntry(
        name="sdxl-turbo",
        endpoints=(A,),
        aliases=("dall-e-2",),
        default=True,
        repo="stabilityai/sdxl-turbo",
        info=from_repo("stabilityai/sdxl-turbo"),
        defaults=GenerationDefaults(steps=1, guidance=0.0, size="512x512"),
        limits=GenerationLimits(min_size=512, max_size=1024, max_steps=4),
        presets={"anime": StylePreset(prompt="{prompt}, anime")},
        **kwargs,
    )


async def test_models_carry_publisher_family_version_and_what_they_support(router: Any) -> None:
    async with router([turbo(), ModelEntry(name="other", endpoints=(B,), supports=frozenset({"generations"}))]) as c:
        listing = (await c.get("/v1/models")).json()["data"]
        by_repo = await c.get("/v1/models/stabilityai/sdxl-turbo")
    other, sdxl = listing
    assert (sdxl["publisher"], sdxl["family"], sdxl["version"]) == ("stabilityai", "sdxl", "turbo")
    assert sdxl["repo"] == "stabilityai/sdxl-turbo" and by_repo.json()["id"] == "sdxl-turbo"
    assert (other["publisher"], other["family"], other["version"]) == (None, None, None)
    assert other["supports"] == {"generations": True, "edits": False, "variations": False, "streaming": False}


async def test_metadata_names_the_service_its_models_presets_and_capabilities(router: Any) -> None:
    async with router([turbo(), ModelEntry(name="flux", presets={"anime": StylePreset()})]) as client:
        response = await client.get("/v1/metadata")
    body = response.json()
    assert body["service"] == "kubediffusion" and body["version"] and body["default_model"] == "sdxl-turbo"
    assert "/v1/images/edits" in body["endpoints"] and "/imagine/generate" in body["endpoints"]
    assert body["presets"] == {"anime": ["flux", "sdxl-turbo"]}
    flux, sdxl = body["models"]
    assert sdxl == {
        "id": "sdxl-turbo",
        "aliases": ["dall-e-2"],
        "repo": "stabilityai/sdxl-turbo",
        "publisher": "stabilityai",
        "family": "sdxl",
        "version": "turbo",
        "default": True,
        "ready": True,
        "supports": {"generations": True, "edits": True, "variations": True, "streaming": True},
        "sizes": {"min": 512, "max": 1024, "default": "512x512"},
        "steps": {"default": 1, "max": 4},
        "guidance": {"default": 0.0},
        "max_n": 4,
        "max_prompt_chars": 2000,
        "presets": ["anime"],
    }
    assert flux["ready"] is False


async def test_metadata_needs_a_key_when_keys_are_on(router: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-1\n")
    async with router(api_keys_file=keys) as client:
        refused = await client.get("/v1/metadata")
        allowed = await client.get("/v1/metadata", headers={"Authorization": "Bearer sk-1"})
    assert_envelope(refused, 401)
    assert allowed.status_code == 200


@pytest.fixture(scope="module")
def openai_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = yaml.safe_load(SPEC.read_text())["components"]["schemas"]
    return schemas


def _types(schema: dict[str, Any], components: dict[str, Any]) -> set[str]:
    """The JSON types a (possibly nullable, anyOf, $ref) schema allows, null left out."""
    if "$ref" in schema:
        return _types(components[schema["$ref"].rsplit("/", 1)[1]], components)
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type") or [])
    for option in schema.get("anyOf", []) + schema.get("oneOf", []):
        found |= _types(option, components)
    if "enum" in schema and not found:
        found = {type(v).__name__.replace("str", "string") for v in schema["enum"]}
    return found - {"null"}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("CreateImageRequest", "CreateImageRequest"),
        ("CreateImageEditRequest", "CreateImageEditRequest"),
        ("CreateImageVariationRequest", "CreateImageVariationRequest"),
        ("ImagesResponse", "ImagesResponse"),
        ("ErrorResponse", "ErrorResponse"),
    ],
)
async def test_openapi_has_openais_field_names_and_types(
    router: Any, openai_schemas: dict[str, Any], ours: str, theirs: str
) -> None:
    openai = openai_schemas
    async with router() as client:
        document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    mine, reference = components[ours], openai[theirs]
    for field, schema in reference["properties"].items():
        assert field in mine["properties"], f"{ours} lacks OpenAI's field {field}"
        expected = _types(schema, openai)
        if expected:
            assert _types(mine["properties"][field], components) & expected, (ours, field)
    assert set(reference.get("required", [])) <= set(mine.get("required", [])) | {"usage"}


async def test_openapi_lists_the_endpoints_and_their_bodies(router: Any) -> None:
    async with router() as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    paths = document["paths"]
    for path in (
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/images/{image_id}",
        "/v1/models",
        "/v1/metadata",
        "/imagine/generate",
        "/imagine/health",
        "/imagine/info",
    ):
        assert path in paths, path
    generations = paths["/v1/images/generations"]["post"]
    assert generations["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateImageRequest")
    assert set(generations["responses"]["200"]["content"]) >= {"application/json", "text/event-stream", "image/png"}
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text
    openai_paths = {path: item for path, item in paths.items() if not path.startswith("/imagine/")}
    assert "422" not in {code for item in openai_paths.values() for op in item.values() for code in op["responses"]}
    legacy = paths["/imagine/generate"]["post"]
    assert set(legacy["responses"]) == {"200", "422"} and "image/png" in legacy["responses"]["200"]["content"]


async def test_the_routes_still_answer_openais_envelope_never_fastapis_422(router: Any, pods: Any) -> None:
    async with router() as client:
        bad = await client.post("/v1/images/generations", json={"prompt": 7})
        edit = await client.post("/v1/images/edits", json={"prompt": "x"})
    assert assert_envelope(bad, 400)["param"] == "prompt"
    assert_envelope(edit, 400)
    assert pods.hits() == 0


def test_static_discovery_reads_the_new_fields_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump([{"name": "t", "repo": "org/t-1", "publisher": "me", "endpoints": []}]))
    discovery = StaticDiscovery(path)
    asyncio.run(discovery.start())
    entry = discovery.table().resolve("org/t-1")
    assert entry.info == ModelInfo(publisher="me", family="t", version="1")
