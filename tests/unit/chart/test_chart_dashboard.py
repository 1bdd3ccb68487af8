"""The Grafana dashboard (charts/kubediffusion/dashboards/kubediffusion.json) asks only for series that exist:
every metric name in its queries is exported by the router or the model server, or is listed below as
coming from kube-state-metrics or as not exported yet. Both lists fail when stale, so a name that appears
in the code, or leaves the dashboard, has to leave them too.

What the code exports is read two ways: the registries of RouterMetrics and InferenceMetrics (names built
at run time included), and every metric created with a literal name anywhere in kubediffusion/router and
kubediffusion/inference (a metric kept outside those classes)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.unit.chart.helm_cli import CHART_DIR, REPO_ROOT

DASHBOARD = json.loads((CHART_DIR / "dashboards" / "kubediffusion.json").read_text())
SOURCES = [REPO_ROOT / "kubediffusion" / "router", REPO_ROOT / "kubediffusion" / "inference"]

# Deployment replicas of the model Deployments im-<model>, from kube-state-metrics.
KUBE_STATE_METRICS = {"kube_deployment_spec_replicas", "kube_deployment_status_replicas_available"}
# Used by the dashboard before the code exports them (issue 16); remove a name here once it is exported.
NOT_YET_EXPORTED: set[str] = set()

METRIC = re.compile(r"\b((?:kubediffusion|kube)_[a-z0-9_]+)\b")
# prometheus_client's types, and the series each one exposes (a Counter's name loses, then regains, _total).
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}


def _declared(path: Path) -> Iterator[tuple[str, str]]:
    """(type, name) of every metric created in a module: ``Counter("name", ...)`` and the like."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if kind not in SUFFIXES:
            continue
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            yield kind, name.value


# A family's type (prometheus_client's collect()) -> the suffixes of its series (a counter's family name has
# no _total).
FAMILY_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def registered_series() -> set[str]:
    from kubediffusion.inference.metrics import InferenceMetrics
    from kubediffusion.router.metrics import RouterMetrics

    series: set[str] = set()
    for registry in (RouterMetrics().registry, InferenceMetrics().registry):
        for family in registry.collect():
            series |= {family.name + suffix for suffix in FAMILY_SUFFIXES[family.type]}
    return series


def exported_series() -> set[str]:
    series = registered_series()
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            for kind, name in _declared(path):
                base = name.removesuffix("_total") if kind.startswith("Counter") else name
                series |= {base + suffix for suffix in SUFFIXES[kind]}
    return series


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels") or []  # collapsed rows hold their panels


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query, panel targets and template variables alike."""
    found = [(p["title"], t["expr"]) for p in panels(DASHBOARD) for t in p.get("targets") or []]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"${variable['name']}", query["query"] if isinstance(query, dict) else query))
    return found


def used_metrics() -> set[str]:
    return {name for _, expr in queries() for name in METRIC.findall(expr)}


def test_both_ways_of_reading_the_code_find_the_metrics_other_components_rely_on() -> None:
    # Names of docs/contracts.md (the operator's autoscaler reads some): if a scan missed them, it would
    # miss others too.
    for series in (registered_series(), exported_series()):
        assert {"kubediffusion_inference_queue_depth", "kubediffusion_inference_images_total",
                "kubediffusion_router_requests_total", "kubediffusion_router_request_duration_seconds_bucket",
                "kubediffusion_router_held_requests"} <= series  # fmt: skip


def test_every_metric_on_the_dashboard_is_exported_or_listed() -> None:
    unknown = used_metrics() - exported_series() - KUBE_STATE_METRICS - NOT_YET_EXPORTED
    assert unknown == set(), "not exported by kubediffusion/router or kubediffusion/inference"


def test_the_lists_of_outside_and_future_metrics_are_not_stale() -> None:
    exported = exported_series()
    assert NOT_YET_EXPORTED & exported == set(), "exported now: remove from NOT_YET_EXPORTED"
    assert KUBE_STATE_METRICS & exported == set()
    assert all(name.startswith("kube_") for name in KUBE_STATE_METRICS)
    assert (NOT_YET_EXPORTED | KUBE_STATE_METRICS) - used_metrics() == set(), "no longer on the dashboard"


def test_every_panel_queries_something_through_the_datasource_variable() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    charts = [p for p in panels(DASHBOARD) if p["type"] != "row"]
    assert charts
    ids = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in charts]
    assert len(ids) == len(set(ids)), "panels on top of each other"
    for panel in charts:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), (panel["title"], target["expr"])
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_the_panels_an_on_call_person_needs_are_there() -> None:
    """The issue's list: requests and errors by model, queue depth, p50/p95 latency, images/s, GPU memory,
    replicas vs desired; plus held requests and images per tenant."""
    by_metric: dict[str, list[str]] = {}
    for _, expr in queries():
        for name in METRIC.findall(expr):
            by_metric.setdefault(name, []).append(expr)
    requests = by_metric["kubediffusion_router_requests_total"]
    assert any("by (model)" in e for e in requests) and any('code=~"5' in e for e in requests)
    latency = by_metric["kubediffusion_router_request_duration_seconds_bucket"]
    assert {q for e in latency for q in re.findall(r"histogram_quantile\((0\.\d+)", e)} >= {"0.5", "0.95"}
    for name in ("kubediffusion_inference_queue_depth", "kubediffusion_inference_images_total",
                 "kubediffusion_inference_gpu_memory_bytes", "kube_deployment_spec_replicas",
                 "kube_deployment_status_replicas_available", "kubediffusion_router_held_requests",
                 "kubediffusion_router_usage_images_total"):  # fmt: skip
        assert name in by_metric, name
    gpu = " ".join(by_metric["kubediffusion_inference_gpu_memory_bytes"])
    assert 'kind="used"' in gpu and 'kind="total"' in gpu
    assert all('deployment=~"im-' in e for e in by_metric["kube_deployment_spec_replicas"])
    assert all("by (tenant" in e for e in by_metric["kubediffusion_router_usage_images_total"])
