"""Engines other than diffusers: adapters in front of another image engine, and the stub.

The model server keeps everything that is ours (the OpenAI contract, validation, defaults and limits,
the queue and batching, metrics, ``/health``, ``/readyz``, the error envelope); an engine only makes
the images. One module per engine, each small; none imports torch, Pillow or psutil, so the base
install (no ``inference`` extra) runs all of them. What each calls upstream: docs/engines/.

    base.py            the Engine Protocol, EngineRequest (what the client set), Capabilities (refusals)
    runner.py          EngineRunner: a batch's jobs at once, their images checked; the upstream probe
    http.py            Upstream: one httpx.AsyncClient per adapter; upstream answers -> our errors
    errors.py          BadGatewayError (502) and the rest of the adapters' error tree
    tasks.py           best-effort clean-up calls (cancel an upstream job) that outlive their request
    stub.py, png.py    the stub engine and its zlib + struct PNG writer
    invokeai.py        InvokeAI's session queue (invokeai_graph.py: the text-to-image graph)
    comfyui.py         ComfyUI's /prompt, /history, /view (comfyui_workflow.py: workflows, placeholders)
    automatic1111.py   AUTOMATIC1111's /sdapi/v1/txt2img and img2img
    openai_images.py   any OpenAI-compatible /images/generations
"""

from __future__ import annotations

import httpx

from kubediffusion.inference.backend import ModelLoadError
from kubediffusion.inference.engines.base import Engine
from kubediffusion.inference.settings import InferenceSettings, engine_api_key


def create_engine(settings: InferenceSettings, transport: httpx.AsyncBaseTransport | None = None) -> Engine:
    """The engine ``settings.engine`` names (not diffusers); ModelLoadError for a setting it cannot use.
    ``transport`` replaces the network in tests."""
    if settings.engine == "stub":
        from kubediffusion.inference.engines.stub import StubEngine

        return StubEngine()
    try:
        key = engine_api_key(settings)
    except OSError as exc:
        raise ModelLoadError(f"cannot read engine_api_key_file {settings.engine_api_key_file}: {exc}") from None
    if settings.engine == "invokeai":
        from kubediffusion.inference.engines.invokeai import InvokeAIEngine

        return InvokeAIEngine(settings, key, transport)
    if settings.engine == "comfyui":
        from kubediffusion.inference.engines.comfyui import ComfyUIEngine

        return ComfyUIEngine(settings, key, transport)
    if settings.engine == "automatic1111":
        from kubediffusion.inference.engines.automatic1111 import Automatic1111Engine

        return Automatic1111Engine(settings, key, transport)
    if settings.engine == "openai":
        from kubediffusion.inference.engines.openai_images import OpenAIImagesEngine

        return OpenAIImagesEngine(settings, key, transport)
    raise ModelLoadError(f"engine {settings.engine!r} is not an adapter")
