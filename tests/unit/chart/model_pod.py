"""A model pod as the operator builds it (its Deployment's pod template), for checks of the chart's
selectors and policies against the labels and ports the operator really sets."""

from __future__ import annotations

from kubediffusion.imagemodel import names
from kubediffusion.imagemodel.spec import ImageModelSpec, resolve_resources
from kubediffusion.operator.parts import Context
from kubediffusion.operator.resources import build_deployment
from tests.unit.chart.helm_cli import Manifest


def model_pod(namespace: str, model: str = "sdxl") -> Manifest:
    spec = ImageModelSpec.from_body({"spec": {"source": {"tiny": {}}}})
    owner = names.Owner(name=model, namespace=namespace, uid="uid")
    ctx = Context(owner=owner, image="img:1", hardware=resolve_resources(spec.resources, {}))
    template = build_deployment(spec, ctx, replicas=1)["spec"]["template"]
    return {"metadata": {**template["metadata"], "namespace": namespace}, "spec": template["spec"]}
