"""The metrics port: `/metrics` in the Prometheus text format, 404 on every other path.

prometheus_client's own server answers every path with metrics, so `/healthz` or `/ready` would look healthy
while the model is still loading; health lives on gRPC (grpc.health.v1) until an HTTP front has its own.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

PATH = "/metrics"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Logs nothing: a scrape every few seconds would flood the server log."""


def metrics_app(registry: CollectorRegistry) -> WSGIApplication:
    """A WSGI app answering PATH with the registry's metrics and anything else with 404."""
    scrape = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH:
            page: Iterable[bytes] = scrape(environ, start_response)
            return page
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: this port serves {PATH} only; health is grpc.health.v1 on the gRPC port\n".encode()]

    return app


def serve_metrics_endpoint(registry: CollectorRegistry, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serves the registry on host:port in a daemon thread: the bound port and a function that stops it.

    Raises OSError when the port cannot be bound."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
    server: WSGIServer = make_server(host, port, metrics_app(registry), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="bertmesh-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
