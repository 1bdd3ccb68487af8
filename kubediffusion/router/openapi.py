"""The router's OpenAPI document (``/openapi.json``, rendered at ``/docs``).

The image routes read their bodies themselves (so that errors are OpenAI's envelope, never FastAPI's
422, and so the pod gets the client's own bytes), so FastAPI cannot see their request bodies. This
module adds them, generated from the very models that validate requests (``kubediffusion.api``), under
the names OpenAI's own schema uses (``CreateImageRequest``, ``CreateImageEditRequest``,
``CreateImageVariationRequest``, ``ImagesResponse``, ``ErrorResponse``, the stream events): the shared
fields carry OpenAI's names and types; our extensions sit beside them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from kubediffusion import __version__
from kubediffusion.api.edits import ImageEditFields, ImageVariationFields
from kubediffusion.api.events import CompletedEvent, PartialImageEvent
from kubediffusion.api.schema import ImageGenerationRequest, ImagesResponse
from kubediffusion.router.routes.legacy import LegacyGenerateRequest

REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
ERROR_RESPONSE = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}
DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
DESCRIPTION = (
    "OpenAI's Images API in front of every model of the cluster (generations, edits, variations, "
    "streaming; stored images by id), plus the older `/imagine` API. Errors are OpenAI's envelope "
    '(`/imagine`: `{"detail": ...}`). See docs/api.md.'
)
SECURED = ("/v1/", "/imagine/generate", "/imagine/info")


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    return schema


def _multipart(fields: type[BaseModel], components: dict[str, Any], *, edit: bool) -> dict[str, Any]:
    schema = _schema(fields, components)
    images: dict[str, Any] = {"type": "array", "items": BINARY, "maxItems": 16}
    properties: dict[str, Any] = {"image": {"anyOf": [BINARY, images]} if edit else BINARY}
    if edit:
        properties |= {"image[]": images, "mask": BINARY}
    schema["properties"] = properties | schema["properties"]
    schema["required"] = ["image", *schema.get("required", [])]
    return schema


def _body(media_type: str, name: str) -> dict[str, Any]:
    return {"required": True, "content": {media_type: {"schema": {"$ref": REF.format(model=name)}}}}


def _answers(stream_event: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": REF.format(model="ImagesResponse")}}}
    if stream_event is not None:
        content["text/event-stream"] = {"schema": {"$ref": REF.format(model=stream_event)}}
    for media in ("image/png", "image/jpeg", "image/webp"):  # Accept: image/... with one image
        content[media] = {"schema": BINARY}
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
    return {
        "200": {"description": "OK", "content": content},
        "400": {"description": "Invalid request", **error},
        "401": {"description": "Missing or wrong API key", **error},
        "404": {"description": "Unknown model", **error},
        "429": {"description": "Rate limit or queue full", **error},
        "503": {"description": "No ready replica", **error},
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=__version__, description=DESCRIPTION, routes=app.routes)
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    components["CreateImageRequest"] = _schema(ImageGenerationRequest, components)
    components["CreateImageEditRequest"] = _multipart(ImageEditFields, components, edit=True)
    components["CreateImageVariationRequest"] = _multipart(ImageVariationFields, components, edit=False)
    components["ImagesResponse"] = _schema(ImagesResponse, components)
    components["ErrorResponse"] = ERROR_RESPONSE
    partial, completed = _schema(PartialImageEvent, components), _schema(CompletedEvent, components)
    components["ImagePartialImageEvent"], components["ImageCompletedEvent"] = partial, completed
    events = {"anyOf": [{"$ref": REF.format(model=name)} for name in ("ImagePartialImageEvent", "ImageCompletedEvent")]}
    components["ImageGenStreamEvent"] = components["ImageEditStreamEvent"] = events
    operations = {
        "/v1/images/generations": (_body("application/json", "CreateImageRequest"), "ImageGenStreamEvent"),
        "/v1/images/edits": (_body("multipart/form-data", "CreateImageEditRequest"), "ImageEditStreamEvent"),
        "/v1/images/variations": (_body("multipart/form-data", "CreateImageVariationRequest"), None),
    }
    for path, (body, stream_event) in operations.items():
        operation = schema["paths"][path]["post"]
        operation["requestBody"] = body
        operation["responses"] = _answers(stream_event)
    components["LegacyGenerateRequest"] = _schema(LegacyGenerateRequest, components)
    detail = {"content": {"application/json": {"schema": DETAIL}}}
    schema["paths"]["/imagine/generate"]["post"] |= {
        "requestBody": _body("application/json", "LegacyGenerateRequest"),
        "responses": {
            "200": {"description": "The image", "content": {"image/png": {"schema": BINARY}}},
            "422": {"description": 'Invalid request (`{"detail": ...}`)', **detail},
        },
    }
    schema["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path, item in schema["paths"].items():
        for operation in item.values():
            # FastAPI documents a 422 for every route with parameters; ours answer 400 with the envelope.
            if not path.startswith("/imagine/") and operation.get("responses", {}).pop("422", None) is not None:
                operation["responses"].setdefault("400", {"description": "Invalid request"})
            if path.startswith(SECURED):
                operation["security"] = [{"bearerAuth": []}]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """``app.openapi()`` builds :func:`build_openapi` once, on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
