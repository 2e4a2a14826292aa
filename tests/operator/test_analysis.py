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


def test_success_rate_reads_grpc_status_for_grpc_and_5xx_for_http() -> None:
    query = success_rate_query(TARGET)
    where = (
        'destination_workload_namespace="ml", destination_workload="minilm-canary", destination_service_name="minilm"'
    )
    assert query == (
        f'1 - (((sum(rate(istio_requests_total{{reporter="destination", request_protocol="grpc", {where}, '
        'grpc_response_status=~"2|4|12|13|14|15"}[1m30s])) or vector(0))'
        f' + (sum(rate(istio_requests_total{{reporter="destination", request_protocol="http", {where}, '
        'response_code=~"5.."}[1m30s])) or vector(0)))'
        f' / sum(rate(istio_requests_total{{reporter="destination", request_protocol=~"grpc|http", {where}}}'
        "[1m30s])))"
    )
    # RESOURCE_EXHAUSTED (8) and HTTP 429 are the rate limiter talking, not the candidate failing; a gRPC call's
    # response_code is 200 whatever happened, so it is only read for HTTP calls.
    assert "|8|" not in query and "429" not in query
    assert query.count("response_code") == 1


def test_p99_latency_query_spans_both_protocols() -> None:
    assert p99_latency_query(TARGET) == (
        "histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket"
        '{reporter="destination", request_protocol=~"grpc|http", destination_workload_namespace="ml", '
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
