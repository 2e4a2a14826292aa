"""Runs the real server (model_server.server.serve) on a background thread with its own event loop.

Tests talk to it over real gRPC on a real loopback socket, with the blocking client or grpc.aio.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc

from model_server.config import ServerConfig, parse_args
from model_server.server import RunningServer, serve


def details(err: grpc.RpcError) -> str:
    """The status message of a failed call ('' when it has none)."""
    return str(err.details() or "")


def code(err: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call."""
    status: grpc.StatusCode = err.code()
    return status


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_for(model: Path | None, *extra: str, metrics: bool = False, http: bool = False) -> ServerConfig:
    """A config parsed from real command-line arguments: loopback, any free port; HTTP only when asked for."""
    argv = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", str(free_port() if metrics else 0)]
    argv += ["--http-port", str(free_port() if http else 0)]
    argv += ["--drain-delay-seconds", "0"]  # no load balancer to wait for; tests/server/test_process.py tests it
    if model is not None:
        argv += ["--model", str(model)]
    return parse_args([*argv, *extra])


class ServerThread:
    """A started server; `stop()` drains it like SIGTERM does."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.running: RunningServer | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="bertmesh-test-server", daemon=True)

    def start(self, timeout: float = 180.0) -> ServerThread:
        """Starts and waits until the model is loaded and health is SERVING."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not become ready")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the test thread by start()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def started(running: RunningServer) -> None:
            self.running = running

            async def wait_ready() -> None:
                await running.ready.wait()
                self._ready.set()

            asyncio.get_running_loop().create_task(wait_ready())

        await serve(self.config, on_started=started, stop=self._stop)

    @property
    def target(self) -> str:
        """host:port of the gRPC listener."""
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_url(self) -> str:
        """The HTTP front's base URL."""
        assert self.running is not None and self.running.http_port
        return f"http://127.0.0.1:{self.running.http_port}"

    @property
    def metrics_url(self) -> str:
        """The /metrics URL."""
        assert self.running is not None
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    def stop(self, timeout: float = 60.0) -> None:
        """Sets the stop event (as SIGTERM would) and waits for the drain to finish."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def scrape(server: ServerThread) -> str:
    """The server's /metrics page."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def metric_value(text: str, name: str, labels: Sequence[tuple[str, str]] = ()) -> float:
    """The value of one sample in Prometheus text format, labels in any order (0 when absent)."""
    wanted = dict(labels)
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, label_text = key.partition("{")
        if sample != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if found == wanted:
            return float(value)
    return 0.0
