"""A fake OpenAI-compatible images API: ``GET /v1/models``, ``POST /v1/images/generations`` with OpenAI's
rules for what this fake calls its model (``n`` at most ``max_n``, ``size`` from ``sizes``, unknown
parameters refused: ``{"error": {"message", "type", "param", "code"}}``), ``b64_json`` items, or ``url``
items served by the fake itself (as OpenAI's CDN does), and a Bearer key checked on the API paths."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.engines.upstream import Behaviour, broken_answer, png, seed_colour

KNOWN = {
    "prompt",
    "model",
    "n",
    "size",
    "quality",
    "style",
    "user",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "moderation",
}
EXTENSIONS = {"negative_prompt", "num_inference_steps", "guidance_scale", "seed"}


def error(message: str, param: str | None, code: str, status: int = 400) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def app(
    behaviour: Behaviour,
    *,
    key: str = "upstream-key",
    max_n: int = 10,
    sizes: tuple[str, ...] = ("64x64", "128x64"),
    extensions: bool = False,
    urls: bool = False,
) -> FastAPI:
    api = FastAPI()
    files: dict[str, bytes] = {}

    def unauthorised(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {key}":
            return error("Incorrect API key provided.", None, "invalid_api_key", status=401)
        return None

    @api.get("/v1/models")
    async def models(request: Request) -> Response:
        if not behaviour.healthy:
            return error("The server is overloaded.", None, "overloaded", status=503)
        return unauthorised(request) or JSONResponse({"object": "list", "data": [{"id": "fake-image-1"}]})

    @api.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        if (denied := unauthorised(request)) is not None:
            return denied
        body: dict[str, Any] = await request.json()
        behaviour.requests.append(body)
        if (broken := await broken_answer(behaviour)) is not None:
            return broken
        if behaviour.failure == "4xx":
            return error(
                "Your request was rejected as a result of our safety system.", None, "content_policy_violation"
            )
        allowed = KNOWN | (EXTENSIONS if extensions else set())
        for name in body:
            if name not in allowed:
                return error(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
        n = body.get("n", 1)
        if n > max_n:
            return error(
                f"Invalid 'n': integer above maximum value. Expected a value <= {max_n}.", "n", "invalid_value"
            )
        if body.get("size") not in sizes:
            return error(f"Invalid 'size': {body.get('size')}. Supported: {', '.join(sizes)}.", "size", "invalid_value")
        await asyncio.sleep(behaviour.delay_s)
        width, height = (int(side) for side in body["size"].split("x"))
        seed = body.get("seed", len(behaviour.requests) * 10)
        images = [png(width, height, seed_colour(seed + i)) for i in range(n)]
        if urls:
            data = []
            for index, image in enumerate(images):
                name = f"{len(files)}-{index}.png"
                files[name] = image
                data.append({"url": f"{request.base_url}files/{name}"})
        else:
            data = [{"b64_json": base64.b64encode(image).decode()} for image in images]
        return JSONResponse({"created": int(time.time()), "data": data})

    @api.get("/files/{name}")
    async def file(name: str) -> Response:
        return Response(files[name], media_type="image/png")

    return api
