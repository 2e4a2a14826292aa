"""PromQL for canary analysis, as pure strings, and the pure reading of Prometheus' answers.

Both measures come from Istio's standard metrics as reported by the canary's own sidecars
(`reporter="destination"`), over the calls of both fronts (`request_protocol` "grpc" or "http"), so they hold
whoever the callers are and whichever protocol they speak:

- success rate: 1 - (failed calls) / (all calls). A gRPC call fails on a server-side `grpc_response_status`
  (its HTTP `response_code` is 200 whatever happened, so it cannot be used); an HTTP call fails on a 5xx
  `response_code`. Client-side statuses (INVALID_ARGUMENT, NOT_FOUND, 4xx) and RESOURCE_EXHAUSTED / 429 (the
  rate limiter and load shedding answer with them: they measure callers, not the candidate) are not failures.
- p99 latency: `histogram_quantile(0.99, ...)` over `istio_request_duration_milliseconds_bucket` of both.

No traffic gives an empty result (or NaN), which `read_scalar` turns into None: missing data, which the
rollout counts as a failed check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# gRPC status codes that blame the server: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
# DATA_LOSS.
SERVER_FAILURE_CODES = ("2", "4", "12", "13", "14", "15")
HTTP_SERVER_FAILURE = "5.."  # response_code of an HTTP call that blames the server
PROTOCOLS = ("grpc", "http")  # Istio's request_protocol of the two fronts


@dataclass(frozen=True)
class AnalysisTarget:
    """Which calls to measure: those served by one workload (a track's Deployment) of one Service."""

    namespace: str
    service: str | None  # None: any Service (mirrored calls arrive with the Service's host plus "-shadow")
    workload: str
    window: str = "1m"


def canary_target(name: str, namespace: str, window: str, *, mirrored: bool = False) -> AnalysisTarget:
    """The target for the canary track of a ModelDeployment (its Deployment is `<name>-canary`).

    `mirrored`: the canary serves mirrored calls, which Istio reports under the host Envoy shadowed them to;
    the canary Deployment serves only this ModelDeployment, so the workload alone selects them.
    """
    service = None if mirrored else name
    return AnalysisTarget(namespace=namespace, service=service, workload=f"{name}-canary", window=window)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(target: AnalysisTarget, extra: str = "", protocol: str = "|".join(PROTOCOLS)) -> str:
    labels = [
        'reporter="destination"',
        f'request_protocol="{protocol}"' if protocol in PROTOCOLS else f'request_protocol=~"{protocol}"',
        f"destination_workload_namespace={_quote(target.namespace)}",
        f"destination_workload={_quote(target.workload)}",
    ]
    if target.service is not None:
        labels.append(f"destination_service_name={_quote(target.service)}")
    if extra:
        labels.append(extra)
    return "{" + ", ".join(labels) + "}"


def success_rate_query(target: AnalysisTarget) -> str:
    """PromQL for the share of the target's gRPC and HTTP calls that did not fail server-side, over the window."""
    grpc_failed = _selector(target, f'grpc_response_status=~"{"|".join(SERVER_FAILURE_CODES)}"', "grpc")
    http_failed = _selector(target, f'response_code=~"{HTTP_SERVER_FAILURE}"', "http")
    every = _selector(target)
    window = target.window
    # "or vector(0)": no failures at all is a real 0, not missing data; only no calls at all is missing.
    return (
        f"1 - (((sum(rate(istio_requests_total{grpc_failed}[{window}])) or vector(0))"
        f" + (sum(rate(istio_requests_total{http_failed}[{window}])) or vector(0)))"
        f" / sum(rate(istio_requests_total{every}[{window}])))"
    )


def p99_latency_query(target: AnalysisTarget) -> str:
    """PromQL for the 99th percentile duration (ms) of the target's gRPC and HTTP calls, over the window."""
    buckets = f"istio_request_duration_milliseconds_bucket{_selector(target)}"
    return f"histogram_quantile(0.99, sum by (le) (rate({buckets}[{target.window}])))"


def read_scalar(response: Mapping[str, Any]) -> float | None:
    """The single value of a Prometheus /api/v1/query answer; None when it is missing, empty or NaN."""
    if response.get("status") != "success":
        return None
    data = response.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif data.get("resultType") == "vector" and isinstance(result, list) and len(result) == 1:
        raw = (result[0].get("value") or [None, None])[1]
    else:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value
