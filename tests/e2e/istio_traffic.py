"""Istio-shaped traffic metrics for the operator's e2e tests: what the canary's destination sidecars would report
(`istio_requests_total` by gRPC status and the request-duration histogram), at a rate and error and latency
profile the test sets, exported for a real Prometheus to scrape."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.e2e.prometheus import MetricsExporter

BUCKETS = ("5", "10", "25", "50", "100", "250", "500", "1000", "2500", "+Inf")


@dataclass
class Profile:
    """The traffic one canary workload serves: calls per second, share failing UNAVAILABLE, latency."""

    rps: float = 50.0
    error_ratio: float = 0.0
    latency_ms: float = 8.0


class IstioTraffic:
    """Counters as Istio's destination sidecars report them, advanced every 0.2s in the exporter.

    `istio_requests_total` by `grpc_response_status` and `istio_request_duration_milliseconds_bucket`, labelled
    with the destination workload, its namespace and service, as `bertmesh_operator.analysis` queries them.
    """

    def __init__(self, exporter: MetricsExporter, namespace: str) -> None:
        self.exporter = exporter
        self.namespace = namespace
        self.profiles: dict[str, Profile] = {}
        self.totals: dict[tuple[str, ...], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="istio-traffic", daemon=True)
        self._thread.start()

    def serve(self, model_deployment: str, profile: Profile) -> None:
        """Have the canary of `model_deployment` serve `profile` from now on."""
        self.profiles[model_deployment] = profile

    def _add(self, name: str, labels: dict[str, str], amount: float) -> None:
        key = (name, *sorted(f"{k}={v}" for k, v in labels.items()))
        self.totals[key] = self.totals.get(key, 0.0) + amount
        self.exporter.set(name, self.totals[key], labels, metric_type="counter")

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.2):
            now = time.monotonic()
            elapsed, last = now - last, now
            for md, profile in list(self.profiles.items()):
                labels = {
                    "reporter": "destination",
                    "request_protocol": "grpc",
                    "destination_workload_namespace": self.namespace,
                    "destination_workload": f"{md}-canary",
                    "destination_service_name": md,
                }
                calls = profile.rps * elapsed
                self._add(
                    "istio_requests_total", {**labels, "grpc_response_status": "0"}, calls * (1 - profile.error_ratio)
                )
                self._add("istio_requests_total", {**labels, "grpc_response_status": "14"}, calls * profile.error_ratio)
                for le in BUCKETS:
                    within = le == "+Inf" or profile.latency_ms <= float(le)
                    self._add(
                        "istio_request_duration_milliseconds_bucket", {**labels, "le": le}, calls if within else 0
                    )

    def close(self) -> None:
        """Stop advancing the counters."""
        self._stop.set()
        self._thread.join(timeout=5)
