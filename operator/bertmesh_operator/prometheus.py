"""The canary's metrics from Prometheus' HTTP API: the thin adapter under `analysis` (which owns the PromQL).

Two outcomes matter to the rollout and are kept apart: an answer without data (no traffic reached the canary:
`None`, a failed check) and no answer at all (Prometheus down or refusing the query: `MetricsUnavailableError`,
which defers the check for a while before it counts as failed).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from bertmesh_operator.analysis import AnalysisTarget, p99_latency_query, read_scalar, success_rate_query
from bertmesh_operator.errors import MetricsUnavailableError
from bertmesh_operator.render.context import DEFAULT_PROMETHEUS_URL

DEFAULT_URL = DEFAULT_PROMETHEUS_URL


@dataclass(frozen=True)
class CanaryMetrics:
    """The canary's success rate and p99 latency (gRPC and HTTP calls together) over the analysis window; None
    where there is no data."""

    success_rate: float | None
    p99_latency_ms: float | None


class MetricsSource(Protocol):
    """Where the operator reads a canary's metrics from (Prometheus, or a fake in tests)."""

    def canary_metrics(self, target: AnalysisTarget) -> CanaryMetrics:
        """Measure the target; raises MetricsUnavailableError when the source cannot be asked."""
        ...


class PrometheusClient:
    """Instant queries against Prometheus' /api/v1/query."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> float | None:
        """The single value of an instant query; None when it returns no (or a NaN) sample."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            # 4xx: Prometheus refused the query; 5xx: it could not run it. Either way there is no answer.
            raise MetricsUnavailableError(f"Prometheus at {self.url} answered HTTP {error.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise MetricsUnavailableError(f"Prometheus at {self.url} is unreachable: {reason}") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise MetricsUnavailableError(f"Prometheus at {self.url} failed the query: {answer}")
        return read_scalar(answer)

    def canary_metrics(self, target: AnalysisTarget) -> CanaryMetrics:
        """The canary's success rate and p99 latency."""
        return CanaryMetrics(
            success_rate=self.query(success_rate_query(target)),
            p99_latency_ms=self.query(p99_latency_query(target)),
        )
