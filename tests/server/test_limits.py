"""Every limit at N and N+1 and every bad input, over real gRPC: the right code, a message naming the field and
the limit, and never INTERNAL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.tokenization import Encoded, TextTokenizer
from tests.server.harness import ServerThread, config_for, details, metric_value, scrape

MAX_INPUTS, MAX_CHARS, MAX_TOKENS, MAX_BYTES = 4, 60, 12, 2000


@pytest.fixture(scope="module")
def limited(tiny_models: dict[str, Path]) -> Iterator[ServerThread]:
    config = config_for(
        tiny_models["embedding"],
        "--max-inputs-per-request",
        str(MAX_INPUTS),
        "--max-chars-per-input",
        str(MAX_CHARS),
        "--max-tokens-per-input",
        str(MAX_TOKENS),
        "--max-message-bytes",
        str(MAX_BYTES),
        "--max-batch-tokens",
        "64",
        metrics=True,
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.fixture
def stub(limited: ServerThread) -> Iterator[pb_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(limited.target) as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value


def embed(stub: pb_grpc.InferenceServiceStub, inputs: list[str], **fields: object) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(inputs=inputs, **fields), timeout=30)  # type: ignore[arg-type]


def test_inputs_per_request(stub: pb_grpc.InferenceServiceStub) -> None:
    assert len(embed(stub, ["a"] * MAX_INPUTS).embeddings) == MAX_INPUTS
    err = refused(lambda: embed(stub, ["a"] * (MAX_INPUTS + 1)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == f"inputs: 5 inputs exceed max_inputs_per_request={MAX_INPUTS}; split the request"


def test_characters_per_input(stub: pb_grpc.InferenceServiceStub) -> None:
    # Single letters, so the token limit is not what trips: "a a a ..." of MAX_CHARS characters.
    at_limit = ("a " * MAX_CHARS)[:MAX_CHARS]
    embed(stub, ["x"], truncate=True)
    embed(stub, [at_limit], truncate=True)
    err = refused(lambda: embed(stub, ["ok", at_limit + "b"], truncate=True))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err).startswith(f"inputs[1]: {MAX_CHARS + 1} characters exceed max_chars_per_input={MAX_CHARS}")


def test_tokens_per_input_reject_or_truncate(stub: pb_grpc.InferenceServiceStub) -> None:
    words = " ".join(["the"] * (MAX_TOKENS - 2))  # + [CLS] and [SEP] = exactly MAX_TOKENS
    reply = embed(stub, [words])
    assert reply.usage.tokens == MAX_TOKENS
    err = refused(lambda: embed(stub, ["fine", words + " the"]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err) == (
        f"inputs[1]: {MAX_TOKENS + 1} tokens exceed max_tokens_per_input={MAX_TOKENS}; "
        "shorten the input, or let the server cut it: truncate=true in the request (--truncate in the bertmesh CLI)"
    )
    cut = embed(stub, [words + " the"], truncate=True)
    assert cut.usage.tokens == MAX_TOKENS


def test_requests_tokenised_together_each_get_their_own_answer_or_error(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No cache, so the requests sent at once are computed again, not answered from the first round.
    argv = ("--max-tokens-per-input", str(MAX_TOKENS), "--cache-entries", "0")
    server = ServerThread(config_for(tiny_models["embedding"], *argv, metrics=True)).start()
    words = " ".join(["the"] * (MAX_TOKENS - 2))  # + [CLS] and [SEP] = exactly MAX_TOKENS
    requests = [[f"text {i} {j}" for j in range(i % 3 + 1)] for i in range(24)]
    # The tokenizer calls of the second round, each held until every request is in, so the others wait together.
    calls: list[int] = []
    release = threading.Event()
    encode = TextTokenizer.encode

    def held(self: TextTokenizer, texts: Sequence[str], **options: Any) -> list[Encoded]:
        calls.append(len(texts))
        release.wait(30)
        return encode(self, texts, **options)

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            alone = [embed(stub, inputs) for inputs in requests]
            monkeypatch.setattr(TextTokenizer, "encode", held)
            # All at once: each request still gets its own vectors, and one over the token limit fails alone,
            # naming its own input.
            futures = [stub.Embed.future(pb.EmbedRequest(inputs=inputs), timeout=30) for inputs in requests]
            over = [stub.Embed.future(pb.EmbedRequest(inputs=["fine", words + " the"]), timeout=30) for _ in range(3)]
            cut = stub.Embed.future(pb.EmbedRequest(inputs=[words + " the"], truncate=True), timeout=30)
            sent = len(futures) + len(over) + 1
            deadline = time.monotonic() + 30
            while metric_value(scrape(server), "bertmesh_inflight_requests") < sent and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            for future, reply in zip(futures, alone, strict=True):
                together = future.result()
                assert together.usage.tokens == reply.usage.tokens > 0
                for a, b in zip(together.embeddings, reply.embeddings, strict=True):
                    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
            for future in over:
                err = future.exception()
                assert isinstance(err, grpc.RpcError) and err.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert details(err).startswith(f"inputs[1]: {MAX_TOKENS + 1} tokens exceed max_tokens_per_input=")
            assert cut.result().usage.tokens == MAX_TOKENS
    finally:
        release.set()
        server.stop()
    # Every text tokenised once, in far fewer calls than requests: the ones that waited went together.
    assert sum(calls) == sum(map(len, requests)) + 2 * len(over) + 1
    assert len(calls) <= 8 < sent, calls


def test_an_embed_stream_error_names_the_message_it_is_in(stub: pb_grpc.InferenceServiceStub) -> None:
    too_long = " ".join(["the"] * (MAX_TOKENS - 1))  # + [CLS] and [SEP]: one token over
    requests = [pb.EmbedRequest(inputs=["fine"]), pb.EmbedRequest(inputs=[too_long]), pb.EmbedRequest(inputs=["x"])]
    replies = stub.EmbedStream(iter(requests), timeout=30)
    assert len(next(replies).embeddings) == 1  # the answers before the bad message still arrive
    err = refused(lambda: next(replies))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err).startswith(f"stream message 1: inputs[0]: {MAX_TOKENS + 1} tokens exceed")


def test_message_size(stub: pb_grpc.InferenceServiceStub) -> None:
    def request_of_size(size: int) -> pb.EmbedRequest:
        request = pb.EmbedRequest(inputs=["a"], model="m")
        while request.ByteSize() < size:  # the length prefix grows with the field, so step there
            request.model += "m"
        assert request.ByteSize() == size
        return request

    at_limit = request_of_size(MAX_BYTES)
    err = refused(lambda: stub.Embed(at_limit, timeout=10))
    assert err.code() is grpc.StatusCode.NOT_FOUND  # parsed and checked: only the silly model name is wrong
    over = refused(lambda: stub.Embed(request_of_size(MAX_BYTES + 1), timeout=10))
    assert over.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(over) == (
        f"request: {MAX_BYTES + 1} bytes exceed max_message_bytes={MAX_BYTES}; send fewer or shorter inputs"
    )


@pytest.mark.parametrize("inputs", [[], [""], ["ok", " \n "]])
def test_empty_requests_and_inputs(stub: pb_grpc.InferenceServiceStub, inputs: list[str]) -> None:
    err = refused(lambda: embed(stub, inputs))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err).startswith("inputs")


def test_invalid_utf8_in_a_string_field_is_invalid_argument(limited: ServerThread) -> None:
    # Field 1 (inputs), wire type 2, 3 bytes that are not UTF-8: a message no protobuf library would build.
    raw = b"\x0a\x03\xff\xfe\xfd"
    with grpc.insecure_channel(limited.target) as channel:
        call = channel.unary_unary(
            "/bertmesh.v1.InferenceService/Embed",
            request_serializer=lambda b: b,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        err = refused(lambda: call(raw, timeout=10))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(err).startswith("request is not a valid bertmesh.v1.EmbedRequest")


def test_unknown_model_and_enum_values(stub: pb_grpc.InferenceServiceStub) -> None:
    err = refused(lambda: embed(stub, ["x"], model="bert-large"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert details(err) == "model: model 'bert-large' is not served here; this server serves 'embedding'"
    err = refused(lambda: embed(stub, ["x"], pooling=9))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and details(err).startswith("pooling: unknown value 9")


def test_task_specific_bad_input(tiny_servers: dict[str, ServerThread]) -> None:
    with grpc.insecure_channel(tiny_servers["fill-mask"].target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        err = refused(lambda: stub.FillMask(pb.FillMaskRequest(inputs=["no mask here"]), timeout=10))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and details(err) == "inputs[0]: no [MASK] token"
        too_many = " ".join(["[MASK]"] * 17)
        err = refused(lambda: stub.FillMask(pb.FillMaskRequest(inputs=[too_many]), timeout=10))
        assert "17 [MASK] tokens exceed the limit of 16" in details(err)
        err = refused(lambda: stub.FillMask(pb.FillMaskRequest(inputs=["[MASK]"], top_k=101), timeout=10))
        assert details(err) == "top_k: 101 is outside 0..100"
        assert stub.FillMask(pb.FillMaskRequest(inputs=["[MASK]"], top_k=100), timeout=10).results
    with grpc.insecure_channel(tiny_servers["token-classification"].target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        err = refused(
            lambda: stub.ClassifyTokens(
                pb.ClassifyTokensRequest(inputs=["x"], aggregation=pb.Aggregation.ValueType(42)), timeout=10
            )
        )
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "aggregation: unknown value 42" in details(err)


def test_no_bad_input_produced_an_internal_error(limited: ServerThread, tiny_servers: dict[str, ServerThread]) -> None:
    for server in (limited, *tiny_servers.values()):
        text = scrape(server)
        internal = [line for line in text.splitlines() if 'code="INTERNAL"' in line and not line.startswith("#")]
        assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in internal), internal
        assert metric_value(text, "bertmesh_requests_total", [("method", "Embed"), ("code", "INTERNAL")]) == 0
