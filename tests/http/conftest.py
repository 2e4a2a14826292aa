"""Fixtures: a real `bertmesh serve` process on the bundled MiniLM with its gRPC, HTTP and metrics ports, and
in-process servers with HTTP on for the error tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from model_server.config import OPENMP_DEFAULTS
from tests.server.conftest import tiny_models
from tests.server.harness import ServerThread, config_for, free_port

__all__ = ["tiny_models"]  # the tiny checkpoints, shared with tests/server
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BERTMESH = [sys.executable, "-m", "bertmesh_cli"]
MODEL = "all-MiniLM-L6-v2"


@dataclass
class ServeProcess:
    """A `bertmesh serve` subprocess and where it listens."""

    proc: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    metrics_url: str
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Kills the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_serve(*args: str) -> ServeProcess:
    """Starts `bertmesh serve` on free ports and waits until it logs that it serves."""
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    argv = ["serve", "--port", str(port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen([*BERTMESH, *argv, *args], stderr=subprocess.PIPE, text=True, env=inherited)
    process = ServeProcess(
        proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    )
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            process.log.append(line)
            if " serving " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(180)
    assert proc.poll() is None, "".join(process.log)
    return process


@pytest.fixture(scope="session")
def minilm_process() -> Iterator[ServeProcess]:
    """`bertmesh serve` on the bundled model, result cache off (so HTTP and gRPC both compute)."""
    process = start_serve("--cache-entries", "0", "--drain-delay-seconds", "0")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tiny_http(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServerThread]]:
    """An in-process server with HTTP on for the tiny embedding, sequence-classification and rerank checkpoints."""
    servers = {
        task: ServerThread(
            config_for(tiny_models[task], "--max-inputs-per-request", "4", metrics=True, http=True)
        ).start()
        for task in ("embedding", "sequence-classification", "rerank")
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def http(tiny_http: dict[str, ServerThread]) -> Iterator[httpx.Client]:
    """An HTTP client of the tiny embedding server."""
    with httpx.Client(base_url=tiny_http["embedding"].http_url, timeout=60) as client:
        yield client
