"""A fake AUTOMATIC1111 webui API (modules/api/api.py, models.py): ``/sdapi/v1/txt2img``, ``img2img``,
``progress``. Bodies are validated as the webui's pydantic models do (unknown fields ignored, wrong
types a FastAPI 422); exceptions answer the webui's ``{"error", "detail", "body", "errors"}``. Image
``i`` of a call has seed ``seed + i`` (the webui's rule), painted as :func:`upstream.seed_colour`."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from tests.engines.upstream import Behaviour, broken_answer, png, seed_colour


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False


class Img2Img(Txt2Img):
    init_images: list[str] | None = None
    denoising_strength: float = 0.75
    mask: str | None = None
    inpainting_mask_invert: int = 0


def app(behaviour: Behaviour, *, auth: tuple[str, str] | None = None) -> FastAPI:
    api = FastAPI()

    def refused(request: Request) -> JSONResponse | None:
        if auth is None:
            return None
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"detail": "Incorrect username or password"}, status_code=401)
        return None

    @api.get("/sdapi/v1/progress")
    async def progress(request: Request) -> JSONResponse:
        if not behaviour.healthy:
            return JSONResponse({"detail": "starting"}, status_code=503)
        return refused(request) or JSONResponse({"progress": 0.0, "eta_relative": 0.0, "state": {}, "textinfo": None})

    async def process(request: Request, body: Txt2Img) -> Any:
        if (denied := refused(request)) is not None:
            return denied
        behaviour.requests.append(body.model_dump(exclude_unset=True))
        if (broken := await broken_answer(behaviour)) is not None:
            return broken
        if behaviour.failure == "4xx":
            return JSONResponse({"detail": "Sampler not found"}, status_code=404)
        await asyncio.sleep(behaviour.delay_s)
        base = body.seed if body.seed != -1 else secrets.randbelow(2**31)
        count = body.batch_size * body.n_iter
        images = [base64.b64encode(png(body.width, body.height, seed_colour(base + i))).decode() for i in range(count)]
        info = {"all_seeds": [base + i for i in range(count)], "sd_model_name": "fake"}
        return {"images": images, "parameters": {}, "info": json.dumps(info)}

    @api.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request, body: Txt2Img) -> Any:
        return await process(request, body)

    @api.post("/sdapi/v1/img2img")
    async def img2img(request: Request, body: Img2Img) -> Any:
        if not body.init_images:
            return JSONResponse({"error": "HTTPException", "detail": "Init image not found"}, status_code=404)
        for encoded in [*body.init_images, *([body.mask] if body.mask else [])]:
            base64.b64decode(encoded, validate=True)
        return await process(request, body)

    return api
