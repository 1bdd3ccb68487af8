"""Any OpenAI-compatible images upstream (OpenAI, another provider, LocalAI, a vLLM-Omni server).

``engine_url`` is the API base as OpenAI's clients take it (``https://api.openai.com/v1``); a job is
``POST {engine_url}/images/generations`` with ``Authorization: Bearer <key>``, ``model: engine_model``,
the prompt, ``n`` and ``size`` (ours, resolved), and the OpenAI fields the client set (``quality``,
``style`` unless it named one of our presets, ``background``, ``moderation``, ``user``,
``output_format``, ``output_compression``), forwarded as sent: the upstream judges them, and its 400 is
passed on with its message, ``param`` and ``code``. ``response_format`` is never sent (not every model
takes it): ``b64_json`` items are used as they are, ``url`` items are downloaded (with the key only when
the URL is on the upstream's own origin).

Limits: ``n`` above ``engine_max_n`` (dall-e-3: 1) is split into several calls; ``engine_sizes`` lists
the sizes the upstream takes (any other is a 400 naming ``size``). Our extensions (``negative_prompt``,
``num_inference_steps``, ``guidance_scale``, ``seed``) are not OpenAI's: they are refused with a 400
naming the field, unless ``engine_forward_extensions`` says the upstream takes them (vLLM-Omni does),
then they are forwarded as the client set them (``seed`` advanced by the images before each call).
Edits are not forwarded (a 400); no partial images.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import httpx

from kubediffusion.api.errors import UpstreamTimeoutError
from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.errors import unsupported
from kubediffusion.inference.engines.http import Upstream
from kubediffusion.inference.settings import InferenceSettings

GENERATIONS = "/images/generations"
HEALTH = "/models"
EXTENSIONS = ("negative_prompt", "num_inference_steps", "guidance_scale", "seed")
WHY_EXTENSION = "the upstream takes OpenAI's fields only (engine_forward_extensions is off)"


class OpenAIImagesEngine:
    def __init__(
        self, settings: InferenceSettings, key: str | None, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self.settings = settings
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.upstream = Upstream(
            "openai",
            settings.engine_url,
            timeout=settings.engine_timeout_seconds,
            headers=self.auth,
            transport=transport,
        )
        self.downloads = httpx.AsyncClient(
            timeout=settings.engine_timeout_seconds, transport=transport, trust_env=False, follow_redirects=True
        )
        sizes = settings.engine_sizes
        if sizes and settings.defaults.size not in sizes:
            raise ModelLoadError(f"the default size {settings.defaults.size} is not one of engine_sizes {sizes}")
        refused = {} if settings.engine_forward_extensions else dict.fromkeys(EXTENSIONS, WHY_EXTENSION)
        self.capabilities = Capabilities(output_formats=frozenset({"png", "jpeg", "webp"}), refused=refused)
        self._description = BackendDescription(
            pipeline_class=f"openai:{settings.engine_model or 'default'}", device="upstream", dtype="n/a"
        )

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        self.capabilities.check("openai", request)
        size = request.fields.get("size")
        sizes = self.settings.engine_sizes
        if sizes and size not in (None, "auto") and size not in sizes:
            raise unsupported("size", f"Invalid 'size': {size}. This model takes {', '.join(sizes)}.")

    async def probe(self) -> None:
        await self.upstream.probe(HEALTH, self.settings.engine_ready_timeout_seconds)

    def payloads(self, job: ImageJob) -> list[dict[str, Any]]:
        """One body per upstream call: ``n`` in chunks of at most ``engine_max_n``."""
        params, most = job.params, self.settings.engine_max_n
        passthrough = dict(job.passthrough)
        bodies = []
        for start in range(0, params.n, most):
            body: dict[str, Any] = {"prompt": params.prompt, "n": min(most, params.n - start)}
            body["size"] = f"{params.width}x{params.height}"
            if self.settings.engine_model:
                body["model"] = self.settings.engine_model
            body.update((name, value) for name, value in passthrough.items() if name not in EXTENSIONS)
            if self.settings.engine_forward_extensions:
                body.update((name, passthrough[name]) for name in EXTENSIONS[:3] if name in passthrough)
                if "seed" in passthrough:
                    body["seed"] = job.seeds[start]
            bodies.append(body)
        return bodies

    async def generate(self, job: ImageJob) -> list[bytes]:
        images: list[bytes] = []
        for body in self.payloads(job):
            answer = await self.upstream.json("POST", GENERATIONS, json=body)
            data = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(data, list) or len(data) != body["n"] or not all(isinstance(i, dict) for i in data):
                raise self.upstream.malformed(f"{GENERATIONS} answered without {body['n']} items in 'data'")
            images += [await self.image(item) for item in data]
        return images

    async def image(self, item: dict[str, Any]) -> bytes:
        if isinstance(item.get("b64_json"), str):
            try:
                return base64.b64decode(item["b64_json"], validate=True)
            except ValueError:
                raise self.upstream.malformed("a b64_json item is not base64") from None
        url = item.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise self.upstream.malformed("an item has neither b64_json nor an http(s) url")
        same_origin = urlsplit(url)[:2] == urlsplit(self.upstream.base_url)[:2]
        try:
            response = await self.downloads.get(url, headers=self.auth if same_origin else {})
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("The openai engine's image url did not answer in time.") from None
        except httpx.HTTPError as exc:
            raise self.upstream.malformed(f"its image url could not be downloaded: {exc!r}") from None
        if not response.is_success:
            raise self.upstream.malformed(f"its image url answered HTTP {response.status_code}")
        return response.content

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.downloads.aclose()
