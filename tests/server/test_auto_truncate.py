"""--auto-truncate over real gRPC: an over-length input is refused without it and cut with it, on the task API
(truncate unset) and on the Open Inference Protocol (no 'truncate' parameter); an explicit false still refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc
from tests.server.harness import ServerThread, config_for, details

MAX_TOKENS = 12
TOO_LONG = " ".join(["the"] * MAX_TOKENS)  # + [CLS] and [SEP]: two tokens over


@pytest.fixture(scope="module", params=[False, True], ids=["refusing", "auto-truncate"])
def server(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Iterator[tuple[ServerThread, bool]]:
    flags = ["--max-tokens-per-input", str(MAX_TOKENS), "--max-batch-tokens", "64", "--cache-entries", "0"]
    started = ServerThread(config_for(tiny_models["embedding"], *flags, *(["--auto-truncate"] * request.param)))
    yield started.start(), request.param
    started.stop()


def embed(server: ServerThread, truncate: bool | None = None) -> pb.EmbedResponse:
    with grpc.insecure_channel(server.target) as channel:
        request = pb.EmbedRequest(inputs=[TOO_LONG], truncate=truncate)  # None: unset
        return pb_grpc.InferenceServiceStub(channel).Embed(request, timeout=30)


def infer(server: ServerThread, **parameters: bool) -> oip.ModelInferResponse:
    text = oip.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[TOO_LONG.encode()])
    )
    request = oip.ModelInferRequest(
        model_name="embedding",
        inputs=[text],
        parameters={name: oip.InferParameter(bool_param=value) for name, value in parameters.items()},
    )
    with grpc.insecure_channel(server.target) as channel:
        return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def refused(call: object) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_TOKENS + 2} tokens exceed max_tokens_per_input={MAX_TOKENS}" in details(err.value)


def test_task_api_default_follows_the_flag(server: tuple[ServerThread, bool]) -> None:
    running, auto = server
    if auto:
        assert embed(running).usage.tokens == MAX_TOKENS
    else:
        refused(lambda: embed(running))


def test_oip_default_follows_the_flag(server: tuple[ServerThread, bool]) -> None:
    running, auto = server
    if auto:
        reply = infer(running)
        assert [o.name for o in reply.outputs] and reply.outputs[0].shape[0] == 1
    else:
        refused(lambda: infer(running))


def test_an_explicit_choice_wins_over_the_flag(server: tuple[ServerThread, bool]) -> None:
    running, _ = server
    refused(lambda: embed(running, truncate=False))
    refused(lambda: infer(running, truncate=False))
    assert embed(running, truncate=True).usage.tokens == MAX_TOKENS
    assert infer(running, truncate=True).outputs[0].shape[0] == 1
