"""``kubediffusion operator``: run the ImageModel operator (kopf) until SIGTERM.

Settings come from flags and ``KD_OPERATOR_*`` (see settings.py; ``--help`` lists them). Standalone
(one replica, ``Recreate``): no kopf peering CRD is needed. Liveness:
``http://0.0.0.0:<health-port>/healthz``. The Kubernetes login is in-cluster or ``$KUBECONFIG``.
"""

from __future__ import annotations

import logging
import sys

import kopf
from pydantic import ValidationError
from pydantic_settings import CliApp, SettingsError

from kubediffusion.operator.handlers import make_registry
from kubediffusion.operator.settings import OperatorSettings


def main(argv: list[str]) -> int:
    try:
        config = CliApp.run(OperatorSettings, cli_args=argv)
    except (ValidationError, SettingsError) as exc:
        sys.stderr.write(f"kubediffusion operator: invalid settings: {exc}\n")
        return 2
    kopf.configure(verbose=config.verbose, log_prefix=True)
    # lightkube's transport and the autoscaler's scrapes would log every request at INFO.
    for name in ("httpx2", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    namespaces = config.namespaces
    kopf.run(
        registry=make_registry(config),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
    )
    return 0
