"""``kubediffusion router``: serve the router app with uvicorn.

Settings come from ``KD_ROUTER_*`` environment variables and the few flags that override them (see
:mod:`.settings`). Exit status 2 for bad settings, flags or configuration, said in one readable line.
"""

from __future__ import annotations

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
from kubediffusion.router.settings import PROG, RouterFlags, RouterSettings, settings_from_cli

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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every upstream request at INFO
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # lightkube's, every list and watch request
    try:
        check_static_config(settings)
        app = create_app(settings)
    except (ValueError, OSError, yaml.YAMLError, ConfigError) as exc:
        log.error("cannot start the router: %s", exc)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # forwarded headers are read only from trusted proxies (client_address.py)
        access_log=False,
        http=http_protocol(settings.header_read_timeout),
    )
    return 0


def check_static_config(settings: RouterSettings) -> None:
    """Fail here, readably, rather than in the app's startup."""
    if settings.discovery != "static":
        return
    if settings.static_config is None:
        raise ValueError("discovery=static needs --static-config (or KD_ROUTER_STATIC_CONFIG)")
    parse_static_config(yaml.safe_load(settings.static_config.read_text()))
