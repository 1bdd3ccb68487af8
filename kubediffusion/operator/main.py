"""``kubediffusion operator``: run the ImageModel operator (kopf) until SIGTERM.

Settings come from ``KD_OPERATOR_*`` (see settings.py); ``--namespace`` overrides the watched
namespaces. Standalone (one replica, ``Recreate``): no kopf peering CRD is needed. Liveness:
``http://0.0.0.0:<health-port>/healthz``. The Kubernetes login is in-cluster or ``$KUBECONFIG``.
"""

from __future__ import annotations

import argparse
import logging

import kopf

from kubediffusion.operator.handlers import make_registry
from kubediffusion.operator.settings import OperatorSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubediffusion operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", help="comma-separated namespaces to watch (default: settings; empty = all)")
    parser.add_argument("--health-port", type=int, help="liveness port (0 = no endpoint)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    if args.namespace is not None:
        overrides["namespace"] = args.namespace
    if args.health_port is not None:
        overrides["health_port"] = args.health_port
    config = OperatorSettings(**overrides)  # type: ignore[arg-type]

    kopf.configure(verbose=args.verbose, log_prefix=True)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    namespaces = config.namespaces
    kopf.run(
        registry=make_registry(config),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
    )
    return 0
