"""Overload, deadlines and cancellation on the real model: shed with RESOURCE_EXHAUSTED, never compute late or
abandoned work, and answer every admitted request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.server.harness import ServerThread, config_for, details, metric_value, scrape

LONG = " ".join(["transformers weigh every token against every other token"] * 18)  # ~150 tokens


def computed_inputs(server: ServerThread) -> float:
    return metric_value(scrape(server), "bertmesh_batch_size_requests_sum")


def poll(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def one_at_a_time() -> Iterator[ServerThread]:
    """The bundled model computing one long input per batch: slow enough to queue behind."""
    config = config_for(
        None, "--max-batch-tokens", "256", "--max-batch-delay-ms", "0", "--cache-entries", "0", metrics=True
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_queue() -> Iterator[ServerThread]:
    """Admission bounded to one full request's tokens."""
    config = config_for(
        None,
        "--max-inputs-per-request",
        "8",
        "--max-tokens-per-input",
        "256",
        "--max-batch-tokens",
        "256",
        "--max-queued-tokens",
        "2048",
        "--cache-entries",
        "0",
        metrics=True,
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


def test_overload_is_shed_and_every_admitted_request_succeeds(small_queue: ServerThread) -> None:
    sent = 40
    with grpc.insecure_channel(small_queue.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        calls = [
            stub.Embed.future(pb.EmbedRequest(inputs=[f"{i} {j} {LONG}" for j in range(8)]), timeout=120)
            for i in range(sent)
        ]
        ok, shed = 0, 0
        for call in calls:
            try:
                assert len(call.result().embeddings) == 8
                ok += 1
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, details(err)
                assert "exceed max_queued_tokens=2048; retry with backoff" in details(err)
                shed += 1
    assert ok >= 1 and shed >= 1 and ok + shed == sent
    text = scrape(small_queue)
    assert metric_value(text, "bertmesh_requests_total", [("method", "Embed"), ("code", "RESOURCE_EXHAUSTED")]) == shed
    assert metric_value(text, "bertmesh_requests_total", [("method", "Embed"), ("code", "OK")]) == ok
    assert metric_value(text, "bertmesh_batch_size_requests_sum") == ok * 8  # shed requests computed nothing
    assert metric_value(text, "bertmesh_queue_tokens") == 0


def test_expired_deadlines_are_never_computed(one_at_a_time: ServerThread) -> None:
    before = computed_inputs(one_at_a_time)
    with grpc.insecure_channel(one_at_a_time.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        busy = stub.Embed.future(pb.EmbedRequest(inputs=[f"{i} {LONG}" for i in range(12)]), timeout=120)
        poll(lambda: computed_inputs(one_at_a_time) > before)  # the model is now busy with `busy`
        late = []
        for i in range(5):
            with pytest.raises(grpc.RpcError) as err:
                stub.Embed(pb.EmbedRequest(inputs=[f"late {i} {LONG}"]), timeout=0.001)
            late.append(err.value.code())
        assert set(late) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert len(busy.result().embeddings) == 12
    poll(lambda: metric_value(scrape(one_at_a_time), "bertmesh_queue_tokens") == 0)
    assert computed_inputs(one_at_a_time) - before == 12


def test_a_cancelled_call_stops_being_computed(one_at_a_time: ServerThread) -> None:
    before = computed_inputs(one_at_a_time)
    with grpc.insecure_channel(one_at_a_time.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.Embed.future(pb.EmbedRequest(inputs=[f"{i} {LONG}" for i in range(40)]), timeout=120)
        poll(lambda: computed_inputs(one_at_a_time) > before)  # mid-request: some batches done, most queued
        assert call.cancel()
        poll(lambda: metric_value(scrape(one_at_a_time), "bertmesh_queue_tokens") == 0)
        after_cancel = computed_inputs(one_at_a_time)
        assert after_cancel - before < 40
        # The server is healthy and answers the next call in full.
        assert len(stub.Embed(pb.EmbedRequest(inputs=["still here"]), timeout=30).embeddings) == 1
    poll(
        lambda: (
            metric_value(scrape(one_at_a_time), "bertmesh_requests_total", [("method", "Embed"), ("code", "CANCELLED")])
            >= 1
        )
    )
