"""The openai adapter's answers with ``url`` items: downloaded, with the upstream key only on its own
origin (a CDN never sees it)."""

from __future__ import annotations

import httpx
import pytest

from kubediffusion.api.schema import GenerationParams
from kubediffusion.inference.backend import ImageJob
from kubediffusion.inference.engines.openai_images import OpenAIImagesEngine
from kubediffusion.inference.engines.stub import picture
from kubediffusion.inference.settings import InferenceSettings

pytestmark = pytest.mark.timeout(20)


async def test_url_items_are_downloaded_and_the_key_stays_on_the_upstreams_origin() -> None:
    seen: list[tuple[str, str | None]] = []
    image = picture(64, 64, 1, b"")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.path.endswith("/images/generations"):
            data = [{"url": "http://api.test/v1/files/a.png"}, {"url": "https://cdn.test/b.png"}]
            return httpx.Response(200, json={"created": 1, "data": data})
        return httpx.Response(200, content=image)

    settings = InferenceSettings(engine="openai", engine_url="http://api.test/v1")
    engine = OpenAIImagesEngine(settings, "sk-test", httpx.MockTransport(handler))
    params = GenerationParams("p", "", 2, 64, 64, 1, 0.0, None, "png", 100)
    assert await engine.generate(ImageJob(params=params, seeds=(1, 2))) == [image, image]
    await engine.aclose()
    assert seen == [
        ("http://api.test/v1/images/generations", "Bearer sk-test"),
        ("http://api.test/v1/files/a.png", "Bearer sk-test"),
        ("https://cdn.test/b.png", None),
    ]
