"""The HTTP front's life beside gRPC: metrics by protocol, 503 while draining, accepted requests finished."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import httpx

from model_server.client import BertmeshClient
from tests.http.conftest import start_serve
from tests.http.test_errors import LONG, openai_error, tei_error
from tests.server.harness import ServerThread, metric_value, scrape


def poll(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_http_requests_are_counted_apart_from_grpc(http: httpx.Client, tiny_http: dict[str, ServerThread]) -> None:
    server = tiny_http["embedding"]
    before = scrape(server)
    assert http.post("/v1/embeddings", json={"input": "a", "model": ""}).status_code == 200
    assert http.post("/embed", json={"inputs": ""}).status_code == 400
    assert http.get("/health").status_code == 200
    with BertmeshClient(server.target) as client:
        client.embed(["a"])
    after = scrape(server)

    def grew(name: str, labels: list[tuple[str, str]]) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert grew("bertmesh_http_requests_total", [("route", "/v1/embeddings"), ("code", "200")]) == 1
    assert grew("bertmesh_http_requests_total", [("route", "/embed"), ("code", "400")]) == 1
    assert grew("bertmesh_http_request_duration_seconds_count", [("route", "/v1/embeddings")]) == 1
    assert grew("bertmesh_health_requests_total", [("method", "GET /health")]) == 1
    assert grew("bertmesh_requests_total", [("method", "Embed"), ("code", "OK")]) == 1  # gRPC's own family


def test_sigterm_finishes_accepted_requests_and_answers_new_ones_503() -> None:
    process = start_serve(
        *("--max-batch-tokens", "256", "--max-batch-delay-ms", "0", "--cache-entries", "0"),
        *("--drain-delay-seconds", "600"),  # SIGINT cuts it short below
    )
    try:
        results: list[httpx.Response] = []
        # One long request: 64 inputs of ~150 tokens, one per batch, so it is still computing at SIGTERM.
        slow = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    f"{process.http_url}/v1/embeddings",
                    json={"input": [f"{i} {LONG}" for i in range(64)], "model": ""},
                    timeout=300,
                )
            )
        )
        slow.start()

        def computing() -> bool:  # its first batch is done: it holds the data plane, 63 batches to go
            page = httpx.get(process.metrics_url).text
            return metric_value(page, "bertmesh_batch_size_requests_count") >= 1

        poll(computing)
        process.proc.send_signal(signal.SIGTERM)
        poll(lambda: httpx.get(f"{process.http_url}/health").status_code == 503)
        unhealthy = httpx.get(f"{process.http_url}/health")
        assert "shutting down" in tei_error(unhealthy, 503, "Unhealthy")
        refused = httpx.post(f"{process.http_url}/v1/embeddings", json={"input": "a", "model": ""})
        assert "shutting down" in openai_error(refused, 503)["message"]
        assert refused.headers["retry-after"] == "1"
        tei_error(httpx.post(f"{process.http_url}/embed", json={"inputs": "a"}), 503, "Unhealthy")
        process.proc.send_signal(signal.SIGINT)  # ends the drain delay: the drain itself begins
        slow.join(300)
        assert results and results[0].status_code == 200, results
        assert len(results[0].json()["data"]) == 64
        assert process.proc.wait(60) == 0
    finally:
        process.stop()


def test_serve_help_shows_the_http_port_and_0_turns_it_off() -> None:
    from model_server.config import build_parser, parse_args

    assert "--http-port" in build_parser({}).format_help() and "(default: 8080)" in build_parser({}).format_help()
    assert parse_args([]).http_port == 8080 and parse_args(["--http-port", "0"]).http_port == 0
