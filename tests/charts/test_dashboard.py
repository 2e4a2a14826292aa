"""The Grafana dashboard reads only metrics and labels that really exist, and covers what operators watch.

Metric names come from the server's own registry (model_server.metrics), labels from the server, the PodMonitor's
relabelings and prometheus-operator's target labels. tests/e2e/test_chart.py runs every query on a real
Prometheus scraping the real registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from model_server.metrics import Metrics
from tests.charts.chart import CHART, Helm, one

DASHBOARD = CHART / "dashboards" / "bertmesh-model-server.json"
# Grafana's variables, as the e2e test substitutes them.
VARIABLES = {"$__rate_interval": "1m", "$namespace": ".+", "$model": ".+"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def exposed_series() -> dict[str, set[str]]:
    """Every series name the server exposes -> its label names (histograms: _bucket, _sum, _count)."""
    names: dict[str, set[str]] = {}
    metrics = Metrics()
    metrics.requests.labels(method="Embed", code="OK").inc()
    metrics.latency.labels(method="Embed").observe(0.01)
    metrics.health_checks.labels(method="Check").inc()
    metrics.http_requests.labels(route="/v1/embeddings", code="200").inc()
    metrics.http_latency.labels(route="/v1/embeddings").observe(0.01)
    metrics.model_info.labels("m", "r", "embedding", "fp32", "packed", "cpu").set(1)
    for family in metrics.registry.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        if family.type == "counter":
            names[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[family.name + suffix] = labels - ({"le"} if suffix != "_bucket" else set())
        else:
            names[family.name] = labels
    return names


def substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_every_query_reads_a_metric_the_server_exposes() -> None:
    exposed = exposed_series()
    used: set[str] = set()
    for title, expr in queries():
        names = set(re.findall(r"\bbertmesh_[a-z_]+\b", expr))
        assert names, f"{title}: no bertmesh metric in {expr}"
        assert names <= set(exposed), f"{title}: {sorted(names - set(exposed))} are not served"
        used |= names
    # The dashboard is about the server's metrics: each family appears at least once (the standard process_*
    # and python_* collectors have dashboards of their own).
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exposed if n.startswith("bertmesh_")}
    assert {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used} == families


def test_every_label_a_query_uses_exists() -> None:
    server_labels = set().union(*exposed_series().values())  # method, code, le
    scrape_labels = {"namespace", "pod"}  # prometheus-operator's target labels
    relabelled = {"model_deployment", "track"}  # the PodMonitor's relabelings (test_chart_render checks them)
    known = server_labels | scrape_labels | relabelled
    for title, expr in queries():
        by = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        matched = set(re.findall(r"([a-z_]+)=~?\"", expr))
        assert by | matched <= known, f"{title}: unknown labels {sorted((by | matched) - known)}"


@pytest.mark.parametrize(
    "topic",
    [
        "bertmesh_requests_total",  # request rate by code
        "histogram_quantile(0.5, sum by (le, track) (rate(bertmesh_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, track) (rate(bertmesh_request_duration_seconds_bucket",
        "bertmesh_inflight_requests",
        "bertmesh_queue_tokens",
        "bertmesh_batch_size_requests_sum",
        "bertmesh_batch_size_tokens_sum",
        "bertmesh_batch_padded_tokens_total",  # padding share
        "bertmesh_cache_hits_total",  # hit rate
    ],
)
def test_the_dashboard_shows(topic: str) -> None:
    assert any(topic in expr for _, expr in queries()), topic


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] == "bertmesh-model-server"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "namespace", "model"}
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel["fieldConfig"]["defaults"]["unit"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$[_a-z]+", target["expr"]))
            assert used <= set(VARIABLES), f"{panel['title']}: {used}"
    # No two panels on top of each other.
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells)


def test_configmap_carries_the_dashboard_file(helm: Helm) -> None:
    objects = helm.template(values={"monitoring": {"dashboard": {"enabled": True}}})
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["bertmesh-model-server.json"]) == dashboard()
