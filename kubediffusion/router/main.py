"""``kubediffusion router``: serve the router app with uvicorn.

Settings come from ``KD_ROUTER_*`` environment variables and the few flags that override them (see
:mod:`.settings`). Exit status 2 for bad settings, flags or configuration, said in one readable line.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import uvicorn
import yaml
from lightkube import ConfigError
from pydantic import ValidationError
from pydantic_settings import SettingsError

from kubediffusion.api.headertimeout import http_protocol
from kubediffusion.router.app import create_app
from kubediffusion.router.discovery import parse_static_config
from kubediffusion.router.logs import configure_logging
from kubediffusion.router.settings import PROG, RouterFlags, RouterSettings, settings_from_cli
from kubediffusion.router.tenants import file_problem

log = logging.getLogger("kubediffusion.router")


def describe_invalid(exc: ValidationError) -> str:
    """One line per bad value, naming the flag and variable to fix (never echoing the value: it may be secret)."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = f"KD_ROUTER_{name.upper()}"
        if name in RouterFlags.model_fields:
            where = f"--{name.replace('_', '-')} / {where}"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        settings = settings_from_cli(argv)
    except ValidationError as exc:
        sys.stderr.write(f"{PROG}: invalid settings:\n{describe_invalid(exc)}\n")
        return 2
    except SettingsError as exc:
        sys.stderr.write(f"{PROG}: {exc} (see --help)\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        check_static_config(settings)
        check_tenants_file(settings)
        app = create_app(settings)
    except (ValueError, OSError, yaml.YAMLError, ConfigError) as exc:
        log.error("cannot start the router: %s", exc)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through the root handler too: request ids, JSON (logs.py)
        proxy_headers=False,  # forwarded headers are read only from trusted proxies (client_address.py)
        access_log=False,
        loop=event_loop(),
        http=http_protocol(settings.header_read_timeout),  # httptools when installed (a dependency), else h11
    )
    return 0


def event_loop() -> str:
    """uvicorn's ``loop=``: uvloop, a dependency (not on Windows), else asyncio's own."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def check_tenants_file(settings: RouterSettings) -> None:
    """A tenants file that is set but broken at startup stops the router (exit 2): better than a router
    that answers every request 503. A file broken later keeps it running, failing closed (tenants.py)."""
    problem = file_problem(settings.tenants_file) if settings.tenants_file is not None else None
    if problem is not None:
        raise ValueError(problem)


def check_static_config(settings: RouterSettings) -> None:
    """Fail here, readably, rather than in the app's startup."""
    if settings.discovery != "static":
        return
    if settings.static_config is None:
        raise ValueError("discovery=static needs --static-config (or KD_ROUTER_STATIC_CONFIG)")
    parse_static_config(yaml.safe_load(settings.static_config.read_text()))
