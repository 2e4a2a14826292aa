"""Prometheus metrics of the server, all prefixed `bertmesh_`, served over HTTP on their own port."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from model_server.batcher import BatchStats
from model_server.metrics_endpoint import serve_metrics_endpoint

if TYPE_CHECKING:
    from model_server.description import ModelDescription

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """The server's collectors in a registry of their own (tests run several servers in one process)."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only double the scrape
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bertmesh_requests", "RPCs answered, by method and status code", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "bertmesh_request_duration_seconds",
            "RPC latency, by method",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # HTTP routes in families of their own: the gRPC families keep their labels (dashboards, alerts, the
        # operator's analysis), and a route's status is an HTTP code, not a gRPC one.
        self.http_requests = Counter(
            "bertmesh_http_requests", "HTTP requests answered, by route and HTTP status", ["route", "code"], registry=r
        )
        self.http_latency = Histogram(
            "bertmesh_http_request_duration_seconds",
            "HTTP request latency, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "bertmesh_inflight_requests", "RPCs and HTTP requests being served (the autoscaling signal)", registry=r
        )
        self.batch_inputs = Histogram(
            "bertmesh_batch_size_requests", "inputs per executed batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "bertmesh_batch_size_tokens", "real tokens per executed batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_padded = Counter("bertmesh_batch_padded_tokens", "tokens computed including padding", registry=r)
        self.batch_real = Counter("bertmesh_batch_real_tokens", "tokens computed excluding padding", registry=r)
        self.batch_seconds = Histogram(
            "bertmesh_batch_duration_seconds", "model time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_inputs = Gauge("bertmesh_queue_requests", "inputs waiting for a batch", registry=r)
        self.queue_tokens = Gauge("bertmesh_queue_tokens", "tokens waiting for a batch", registry=r)
        self.expired = Counter(
            "bertmesh_expired_inputs", "inputs dropped uncomputed: deadline passed in queue", registry=r
        )
        self.cache_hits = Counter("bertmesh_cache_hits", "inputs answered from the result cache", registry=r)
        self.cache_misses = Counter("bertmesh_cache_misses", "inputs not in the result cache", registry=r)
        self.ready = Gauge("bertmesh_model_ready", "1 once the model is loaded and warm, 0 otherwise", registry=r)
        self.model_info = Gauge(
            "bertmesh_model_info",
            "1 for the served model (join on it to label any series by model)",
            ["model", "revision", "task", "precision", "engine", "device"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "bertmesh_queue_duration_seconds",
            "time an input waited for its batch to start",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenization = Histogram(
            "bertmesh_tokenization_duration_seconds",
            "time to tokenize one request's inputs",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.health_checks = Counter(
            "bertmesh_health_requests",
            "grpc.health.v1 calls (probes and load balancers), apart from the inference requests",
            ["method"],
            registry=r,
        )
        # The process (CPU, memory, open files) and the interpreter (GC, version), as the default registry has.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)

    def on_model(self, model: ModelDescription) -> None:
        """Records the served model in bertmesh_model_info."""
        self.model_info.labels(
            model.name, model.revision, model.task.value, model.precision, model.engine, model.device
        ).set(1)

    def bind_queue(self, inputs: Callable[[], float], tokens: Callable[[], float]) -> None:
        """Makes the queue gauges read the batcher's live depth at scrape time."""
        self.queue_inputs.set_function(inputs)
        self.queue_tokens.set_function(tokens)

    def on_batch(self, stats: BatchStats) -> None:
        """Records one executed batch."""
        self.batch_inputs.observe(stats.inputs)
        self.batch_tokens.observe(stats.tokens)
        self.batch_real.inc(stats.tokens)
        self.batch_padded.inc(stats.padded_tokens)
        self.batch_seconds.observe(stats.seconds)
        for wait in stats.queue_seconds:
            self.queue_wait.observe(wait)

    def on_expired(self, count: int) -> None:
        """Records inputs dropped because their deadline passed."""
        self.expired.inc(count)

    def on_cache(self, hits: int, misses: int) -> None:
        """Records one request's cache lookups."""
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serves /metrics (only) on host:port in a daemon thread; returns a function that stops it."""
        self.port, stop = serve_metrics_endpoint(self.registry, host, port)
        return stop
