"""Canary analysis queries: gRPC-aware, scoped to the canary workload, and honest about missing data."""

from __future__ import annotations

from typing import Any

import pytest

from bertmesh_operator.analysis import (
    AnalysisTarget,
    canary_target,
    p99_latency_query,
    read_scalar,
    success_rate_query,
)

TARGET = canary_target("minilm", "ml", "1m30s")


def test_canary_target_names_the_canary_deployment() -> None:
    assert AnalysisTarget(namespace="ml", service="minilm", workload="minilm-canary", window="1m30s") == TARGET


def test_success_rate_uses_grpc_status_not_http_code() -> None:
    query = success_rate_query(TARGET)
    assert query == (
        '1 - ((sum(rate(istio_requests_total{reporter="destination", request_protocol="grpc", '
        'destination_workload_namespace="ml", destination_workload="minilm-canary", '
        'destination_service_name="minilm", grpc_response_status=~"2|4|12|13|14|15"}[1m30s])) or vector(0))'
        ' / sum(rate(istio_requests_total{reporter="destination", request_protocol="grpc", '
        'destination_workload_namespace="ml", destination_workload="minilm-canary", '
        'destination_service_name="minilm"}[1m30s])))'
    )
    assert "response_code" not in query
    # RESOURCE_EXHAUSTED (8) is the rate limiter talking, not the candidate failing.
    assert "|8|" not in query


def test_p99_latency_query() -> None:
    assert p99_latency_query(TARGET) == (
        "histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket"
        '{reporter="destination", request_protocol="grpc", destination_workload_namespace="ml", '
        'destination_workload="minilm-canary", destination_service_name="minilm"}[1m30s])))'
    )


def test_label_values_are_escaped() -> None:
    query = p99_latency_query(AnalysisTarget(namespace='a"b', service="s\\x", workload="w", window="1m"))
    assert 'destination_workload_namespace="a\\"b"' in query
    assert 'destination_service_name="s\\\\x"' in query


@pytest.mark.parametrize(
    ("response", "value"),
    [
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "0.995"]}]}}, 0.995),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "42"]}}, 42.0),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "NaN"]}]}}, None),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "+Inf"]}]}}, None),
        ({"status": "error", "error": "bad query"}, None),
        ({}, None),
    ],
)
def test_read_scalar(response: dict[str, Any], value: float | None) -> None:
    assert read_scalar(response) == value
