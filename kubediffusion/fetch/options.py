"""The download policy and archive limits as ``fetch-model`` flags, each with an environment variable.

The operator may pass either (flags in the cache Job's args, or ``KD_FETCH_*`` env); a flag given on
the command line wins over its variable. Lists in a variable are comma- or space-separated.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from kubediffusion.fetch.limits import Limits, parse_quantity
from kubediffusion.fetch.policy import MAX_REDIRECTS, DownloadPolicy, IPNetwork, parse_network

ENV_PREFIX = "KD_FETCH_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _size(text: str) -> int:
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _network(text: str) -> IPNetwork:
    try:
        return parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    policy = parser.add_argument_group("download policy (--url http/https sources)")
    policy.add_argument(
        "--allow-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow plain http (default: https only; env KD_FETCH_ALLOW_HTTP=true)",
    )
    policy.add_argument(
        "--allow-network",
        action="append",
        type=_network,
        metavar="CIDR",
        help="also allow addresses in this network, though loopback, link-local, private, CGNAT or reserved"
        " (repeatable; env KD_FETCH_ALLOW_NETWORKS, comma-separated)",
    )
    policy.add_argument(
        "--allow-host",
        action="append",
        metavar="HOST",
        help="download only from these hosts (exact, or *.example.com; repeatable; default any;"
        " env KD_FETCH_ALLOW_HOSTS)",
    )
    policy.add_argument(
        "--max-redirects",
        metavar="N",
        type=int,
        default=_env("MAX_REDIRECTS", str(MAX_REDIRECTS)),
        help=f"redirects followed, each checked (default {MAX_REDIRECTS}; env KD_FETCH_MAX_REDIRECTS)",
    )
    limits = parser.add_argument_group("archive limits")
    limits.add_argument(
        "--max-bytes",
        type=_size,
        default=_env("MAX_BYTES"),
        metavar="SIZE",
        help="most bytes an archive may extract to, e.g. 20Gi (the cache volume's size; default: the volume's"
        " free space; env KD_FETCH_MAX_BYTES)",
    )
    limits.add_argument(
        "--max-ratio",
        metavar="N",
        type=_positive(float),
        default=_env("MAX_RATIO", "100"),
        help="most extracted bytes per archive byte past the first 16 MiB (default 100; env KD_FETCH_MAX_RATIO)",
    )
    limits.add_argument(
        "--max-members",
        metavar="N",
        type=_positive(int),
        default=_env("MAX_MEMBERS", "10000"),
        help="most members in an archive (default 10000; env KD_FETCH_MAX_MEMBERS)",
    )
    limits.add_argument(
        "--max-path-length",
        metavar="N",
        type=_positive(int),
        default=_env("MAX_PATH_LENGTH", "1024"),
        help="longest member path in bytes (default 1024; env KD_FETCH_MAX_PATH_LENGTH)",
    )
    limits.add_argument(
        "--max-depth",
        metavar="N",
        type=_positive(int),
        default=_env("MAX_DEPTH", "32"),
        help="deepest member path in folders (default 32; env KD_FETCH_MAX_DEPTH)",
    )


def _env_list(name: str) -> list[str]:
    return [item for item in (_env(name) or "").replace(",", " ").split() if item]


def policy_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> DownloadPolicy:
    allow_http = args.allow_http
    if allow_http is None:
        text = (_env("ALLOW_HTTP") or "").strip().lower()
        if text not in _TRUE + _FALSE:
            parser.error(f"KD_FETCH_ALLOW_HTTP: {text!r} is not true or false")
        allow_http = text in _TRUE
    networks = args.allow_network
    if networks is None:
        try:
            networks = [parse_network(item) for item in _env_list("ALLOW_NETWORKS")]
        except ValueError as exc:
            parser.error(f"KD_FETCH_ALLOW_NETWORKS: {exc}")
    hosts = args.allow_host if args.allow_host is not None else _env_list("ALLOW_HOSTS")
    if args.max_redirects < 0:
        parser.error("--max-redirects must be 0 or more")
    return DownloadPolicy(
        allow_http=bool(allow_http),
        allowed_networks=tuple(networks),
        allowed_hosts=tuple(host.lower() for host in hosts),
        max_redirects=args.max_redirects,
    )


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(
        max_bytes=args.max_bytes,
        max_ratio=args.max_ratio,
        max_members=args.max_members,
        max_path_length=args.max_path_length,
        max_depth=args.max_depth,
    )
