"""FastAPI dependencies of the inference routes: ``ServerDep`` is the app's ``InferenceServer``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kubediffusion.inference.server import InferenceServer


async def get_server(request: Request) -> InferenceServer:  # async: FastAPI runs sync dependencies in a thread
    server: InferenceServer = request.app.state.server
    return server


ServerDep = Annotated[InferenceServer, Depends(get_server)]
