"""The metrics port as Prometheus and a curious user see it: what is served, where, and what it says."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_server.client import BertmeshClient
from tests.server.harness import ServerThread, config_for, metric_value, scrape


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path]) -> Iterator[ServerThread]:
    started = ServerThread(config_for(tiny_models["embedding"], metrics=True)).start()
    yield started
    started.stop()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_metrics_are_served_on_metrics_only(server: ServerThread) -> None:
    assert "bertmesh_model_ready 1.0" in scrape(server)
    root = server.metrics_url.removesuffix("/metrics")
    assert status_of(f"{root}/metrics?name[]=bertmesh_model_ready") == 200
    # A probe pointed here by mistake must not see a healthy answer while the model loads.
    for path in ("/", "/healthz", "/ready", "/v2/health/ready", "/metrics/extra"):
        assert status_of(root + path) == 404, path


def test_the_served_model_is_described_in_model_info(server: ServerThread, tiny_models: dict[str, Path]) -> None:
    [line] = [line for line in scrape(server).splitlines() if line.startswith("bertmesh_model_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert line.endswith(" 1.0")
    assert labels == {
        "model": tiny_models["embedding"].name,
        "revision": labels["revision"],
        "task": "embedding",
        "precision": "fp32",
        "engine": server.config.engine.kind if server.config.engine.kind != "auto" else "packed",
        "device": "cpu",
    }
    assert labels["revision"]  # the checkpoint's digest


def test_process_and_python_collectors_are_served(server: ServerThread) -> None:
    text = scrape(server)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info", "python_gc_"):
        assert name in text, name


def test_queue_wait_and_tokenization_are_timed(server: ServerThread) -> None:
    before = scrape(server)
    with BertmeshClient(server.target) as client:
        client.embed(["one text", "another text", "a third"])
    after = scrape(server)
    for histogram, per in (("bertmesh_queue_duration_seconds", 3), ("bertmesh_tokenization_duration_seconds", 1)):
        grown = metric_value(after, f"{histogram}_count") - metric_value(before, f"{histogram}_count")
        assert grown == per, histogram


def test_health_checks_are_counted_apart_from_inference(server: ServerThread) -> None:
    before = scrape(server)
    with BertmeshClient(server.target) as client:
        for _ in range(3):
            assert client.serving()
    after = scrape(server)
    checks = [("method", "Check")]
    assert (
        metric_value(after, "bertmesh_health_requests_total", checks)
        - metric_value(before, "bertmesh_health_requests_total", checks)
        == 3
    )
    assert metric_value(after, "bertmesh_requests_total", [("method", "Check"), ("code", "OK")]) == 0
