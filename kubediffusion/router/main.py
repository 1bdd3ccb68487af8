"""``kubediffusion router``: serve the router app with uvicorn.

Settings come from ``KD_ROUTER_*`` environment variables; the few flags here override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
import yaml
from kubernetes.config import ConfigException
from pydantic import ValidationError

from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import parse_static_config
from kubediffusion.router.settings import RouterSettings

log = logging.getLogger("kubediffusion.router")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubediffusion router",
        description="OpenAI-compatible Images router. "
        "Everything is configurable with KD_ROUTER_* environment variables.",
    )
    parser.add_argument("--host", help="listen address (KD_ROUTER_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (KD_ROUTER_PORT, default 8080)")
    parser.add_argument("--discovery", choices=["kubernetes", "static"], help="KD_ROUTER_DISCOVERY")
    parser.add_argument("--static-config", type=Path, help="YAML list of models (implies --discovery static)")
    parser.add_argument("--namespace", help="namespace to watch; empty = all (KD_ROUTER_NAMESPACE)")
    parser.add_argument("--storage-dir", type=Path, help="where url-response images are kept")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    if "static_config" in overrides:
        overrides.setdefault("discovery", "static")
    return RouterSettings(**overrides)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        sys.stderr.write(f"kubediffusion router: invalid settings: {exc}\n")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every upstream request at INFO
    try:
        if settings.discovery == "static":  # fail here, readably, rather than in the app's startup
            if settings.static_config is None:
                raise ValueError("discovery=static needs --static-config (or KD_ROUTER_STATIC_CONFIG)")
            parse_static_config(yaml.safe_load(settings.static_config.read_text()))
        app = create_app(settings)
    except (ValueError, OSError, yaml.YAMLError, ConfigException) as exc:
        log.error("cannot start the router: %s", exc)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        access_log=False,
    )
    return 0
