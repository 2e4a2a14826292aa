"""The metrics port as Prometheus and a curious user see it: what is served, where, and what it says."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.harness import ServerThread, config_for, scrape


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
