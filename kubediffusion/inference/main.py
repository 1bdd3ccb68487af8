"""``kubediffusion inference``: run the model server for one model with uvicorn.

Exit status: 0 after a normal shutdown, 1 when the model cannot be loaded (the reason is logged and,
in a Kubernetes pod, written to /dev/termination-log so it shows in the pod's status), 2 for bad
settings. A missing or incomplete model directory is detected before the server starts. Another engine
(``--engine``) needs no model directory, and this module imports nothing of torch for it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from kubediffusion.api.headertimeout import http_protocol
from kubediffusion.inference.app import create_app
from kubediffusion.inference.backend import ModelLoadError
from kubediffusion.inference.logs import configure_logging
from kubediffusion.inference.pipeline import check_model_dir  # torch is imported only inside its loader
from kubediffusion.inference.settings import InferenceSettings, settings_from_cli

log = logging.getLogger("kubediffusion.inference")

TERMINATION_LOG = Path("/dev/termination-log")


def _fail(message: str) -> None:
    log.error("cannot serve the model: %s", message)
    try:
        if TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(f"ModelLoadFailed: {message}\n", encoding="utf-8")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    try:
        settings = settings_from_cli(argv)
    except (ValidationError, ValueError) as exc:  # pydantic_settings.SettingsError is a ValueError
        cause = exc.__cause__  # e.g. the JSON decode error behind "error parsing value for field"
        detail = f" ({cause})" if cause is not None and str(cause) not in str(exc) else ""
        sys.stderr.write(f"kubediffusion inference: invalid settings: {exc}{detail}\n")
        return 2
    handler = configure_logging(settings.log_level, settings.log_format)  # request ids in every line, JSON optional
    try:
        return _serve(settings)
    finally:
        logging.getLogger().removeHandler(handler)  # a main() called in-process (tests) leaves none behind


def _serve(settings: InferenceSettings) -> int:
    if settings.engine == "diffusers":
        try:
            check_model_dir(settings.model_dir)
        except ModelLoadError as exc:
            _fail(str(exc))
            return 1

    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through the root handler too: request ids, JSON (logs.py)
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1
        timeout_graceful_shutdown=30,
        http=http_protocol(settings.header_read_timeout),
    )
    server = uvicorn.Server(config)
    server.run()
    if fatal:
        _fail(fatal[0])
        return 1
    return 0
