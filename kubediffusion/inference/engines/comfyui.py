"""ComfyUI through its own HTTP API (``server.py``): ``POST /prompt``, ``GET /history/{prompt_id}``,
``GET /view``.

A job: the workflow (:mod:`.comfyui_workflow`, built in or ``engine_workflow``) with its placeholders
filled is queued with ``POST /prompt`` (``{"prompt": workflow, "client_id": "kubediffusion"}``; a 400
carries ComfyUI's validation error and is passed on as our 400). ``GET /history/{prompt_id}`` is ``{}``
until the prompt has run, then holds its ``status`` (``status_str`` success or error, the
``execution_error`` message) and ``outputs``: per output node, ``images`` of
``{filename, subfolder, type}``. Images of type ``output`` (``SaveImage``; previews are ``temp``) are
fetched with ``GET /view?filename=…&subfolder=…&type=output`` (PNG), in node order. A job that times out
is deleted from ComfyUI's queue (``POST /queue {"delete": [prompt_id]}``).

``n`` images: with ``{{batch_size}}``, one prompt per ``engine_max_n`` images; without, one prompt per
image, seed ``s + i``. Readiness: ``GET /system_stats`` answers. A credential is sent as
``Authorization: Bearer`` (ComfyUI has none itself; a proxy in front of it may). PNG only, no edits,
no partial images.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from kubediffusion.inference.backend import BackendDescription, ImageJob, ModelLoadError
from kubediffusion.inference.engines.base import Capabilities, EngineRequest
from kubediffusion.inference.engines.comfyui_workflow import fill, load_workflow, placeholders, refusals
from kubediffusion.inference.engines.errors import BadGatewayError
from kubediffusion.inference.engines.http import Upstream
from kubediffusion.inference.engines.tasks import in_background
from kubediffusion.inference.settings import InferenceSettings

HEALTH = "/system_stats"
CLIENT_ID = "kubediffusion"
DEFAULT_SAMPLER = "euler"


class ComfyUIEngine:
    def __init__(
        self, settings: InferenceSettings, key: str | None, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self.settings = settings
        self.workflow = load_workflow(settings.engine_workflow)
        self.found = placeholders(self.workflow)
        if "model" in self.found and not settings.engine_model:
            raise ModelLoadError("the comfyui workflow has a {{model}} placeholder: set engine_model (a checkpoint)")
        self.capabilities = Capabilities(output_formats=frozenset({"png"}), refused=refusals(self.workflow))
        headers = {"Authorization": f"Bearer {key}"} if key else None
        self.upstream = Upstream(
            "comfyui",
            settings.engine_url,
            timeout=settings.engine_timeout_seconds,
            headers=headers,
            transport=transport,
        )
        self._description = BackendDescription(
            pipeline_class=f"comfyui:{settings.engine_model or settings.engine_workflow}",
            device="upstream",
            dtype="n/a",
        )

    @property
    def description(self) -> BackendDescription:
        return self._description

    def check(self, request: EngineRequest) -> None:
        self.capabilities.check("comfyui", request)

    async def probe(self) -> None:
        await self.upstream.probe(HEALTH, self.settings.engine_ready_timeout_seconds)

    def prompts(self, job: ImageJob) -> list[tuple[int, dict[str, Any]]]:
        """(images it makes, filled workflow) per ``POST /prompt`` of this job."""
        params, seeds = job.params, job.seeds
        step = self.settings.engine_max_n if "batch_size" in self.found else 1
        prompts = []
        for start in range(0, params.n, step):
            count = min(step, params.n - start)
            values = {
                "prompt": params.prompt,
                "negative_prompt": params.negative_prompt,
                "seed": seeds[start],
                "steps": params.steps,
                "guidance": params.guidance,
                "width": params.width,
                "height": params.height,
                "batch_size": count,
                "model": self.settings.engine_model,
                "sampler": self.settings.engine_sampler or DEFAULT_SAMPLER,
            }
            prompts.append((count, fill(self.workflow, values)))
        return prompts

    async def generate(self, job: ImageJob) -> list[bytes]:
        images: list[bytes] = []
        for count, workflow in self.prompts(job):
            queued = await self.upstream.json("POST", "/prompt", json={"prompt": workflow, "client_id": CLIENT_ID})
            prompt_id = queued.get("prompt_id") if isinstance(queued, dict) else None
            if not isinstance(prompt_id, str) or not prompt_id:
                raise self.upstream.malformed("POST /prompt answered without a prompt_id")
            try:
                outputs = await self._wait(prompt_id)
            except BaseException:
                in_background(self._delete(prompt_id), f"delete comfyui prompt {prompt_id}")
                raise
            files = [image for image in _output_images(outputs)][:count]
            if len(files) < count:
                raise self.upstream.malformed(f"prompt {prompt_id} saved {len(files)} images, {count} were asked for")
            for image in files:
                query = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"}
                images.append(await self.upstream.content("/view", params=query))
        return images

    async def _wait(self, prompt_id: str) -> dict[str, Any]:
        while True:
            history = await self.upstream.json("GET", f"/history/{prompt_id}")
            if not isinstance(history, dict):
                raise self.upstream.malformed(f"GET /history/{prompt_id} answered something that is not an object")
            entry = history.get(prompt_id)
            if isinstance(entry, dict):
                status: dict[str, Any] = entry["status"] if isinstance(entry.get("status"), dict) else {}
                if status.get("status_str") == "error":
                    raise BadGatewayError(f"The comfyui prompt {prompt_id} failed: {_execution_error(status)}")
                outputs = entry.get("outputs")
                if status.get("completed", True) and isinstance(outputs, dict):
                    return outputs
            await asyncio.sleep(self.settings.engine_poll_interval_seconds)

    async def _delete(self, prompt_id: str) -> None:
        await self.upstream.client.post("/queue", json={"delete": [prompt_id]}, timeout=5.0)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _output_images(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for output in outputs.values():
        images = output.get("images") if isinstance(output, dict) else None
        for image in images if isinstance(images, list) else ():
            if isinstance(image, dict) and image.get("type") == "output" and isinstance(image.get("filename"), str):
                found.append(image)
    return found


def _execution_error(status: dict[str, Any]) -> str:
    for message in status.get("messages") or ():
        if isinstance(message, list | tuple) and len(message) == 2 and message[0] == "execution_error":
            data = message[1] if isinstance(message[1], dict) else {}
            where = f" in node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else ""
            return f"{data.get('exception_type', 'error')}: {data.get('exception_message', '')}{where}".strip()
    return "ComfyUI reported an error without an execution_error message"
