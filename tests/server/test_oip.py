"""Open Inference Protocol v2 with NVIDIA's own client (tritonclient.grpc) and with raw protocol messages."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from model_server.client import BertmeshClient
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc
from tests.server.corpus import SENTENCES
from tests.server.harness import ServerThread, details


@pytest.fixture(scope="module")
def triton_client(minilm_server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(minilm_server.target)
    yield client
    client.close()


def text_input(texts: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_))
    return tensor


def test_server_and_model_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("all-MiniLM-L6-v2")
    server = triton_client.get_server_metadata()
    assert server.name == "bertmesh"
    meta = triton_client.get_model_metadata("all-MiniLM-L6-v2")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("embedding", "FP32")]
    # Triton's ModelConfig extension, parsed by tritonclient with Triton's own (full) message definitions.
    config = triton_client.get_model_config("all-MiniLM-L6-v2").config
    assert (config.name, config.max_batch_size) == ("all-MiniLM-L6-v2", 0)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("text", 13, [-1])]  # TYPE_STRING
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("embedding", 11, [-1, -1])]


def test_model_infer_round_trip_equals_the_task_api(
    triton_client: triton.InferenceServerClient, minilm_client: BertmeshClient
) -> None:
    result = triton_client.infer("all-MiniLM-L6-v2", [text_input([s.encode() for s in SENTENCES])], request_id="req-7")
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    assert result.get_response().id == "req-7"
    assert np.allclose(vectors, minilm_client.embed(SENTENCES), atol=1e-6)


def test_parameters_choose_pooling_and_normalisation(
    triton_client: triton.InferenceServerClient, minilm_client: BertmeshClient
) -> None:
    result = triton_client.infer(
        "all-MiniLM-L6-v2",
        [text_input([b"hello world"])],
        parameters={"pooling": "cls", "normalize": False},
    )
    expected = minilm_client.embed(["hello world"], pooling="cls", normalize=False)
    assert np.allclose(result.as_numpy("embedding"), expected, atol=1e-6)


def test_invalid_utf8_and_unknown_names_are_invalid_or_not_found(triton_client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as bad_text:
        triton_client.infer("all-MiniLM-L6-v2", [text_input([b"fine", b"\xff\xfe broken"])])
    assert "StatusCode.INVALID_ARGUMENT" in str(bad_text.value.status())
    assert "inputs[0] ('text')[1]: not valid UTF-8" in bad_text.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer("bert-large", [text_input([b"x"])])
    assert "StatusCode.NOT_FOUND" in str(unknown.value.status())
    assert "'bert-large' is not served here" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad_output:
        triton_client.infer("all-MiniLM-L6-v2", [text_input([b"x"])], outputs=[triton.InferRequestedOutput("logits")])
    assert "outputs[0].name: unknown output 'logits'" in bad_output.value.message()


def raw_bytes(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"inputs": []}, "expected exactly one input tensor"),
        ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1]}]}, "inputs[0].name: expected 'text'"),
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1]}]}, "datatype: expected BYTES"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2]}]}, "shape: expected [N] or [N, 1]"),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3]}], "raw": raw_bytes(b"a", b"b")},
            "declares 3 elements, contents hold 2",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}], "raw": b"\x09\x00\x00\x00abc"},
            "BYTES element 0 declares 9 bytes, 3 remain",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0]}], "raw": b""},
            "inputs: at least one input is required",
        ),
    ],
)
def test_malformed_tensors_are_invalid_arguments(
    minilm_server: ServerThread, request_fields: dict[str, object], message: str
) -> None:
    request = oip.ModelInferRequest(model_name="all-MiniLM-L6-v2")
    for tensor in request_fields["inputs"]:  # type: ignore[attr-defined]
        request.inputs.add(**tensor)
    if "raw" in request_fields:
        request.raw_input_contents.append(request_fields["raw"])  # type: ignore[arg-type]
    with grpc.insecure_channel(minilm_server.target) as channel, pytest.raises(grpc.RpcError) as err:
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in details(err.value)


def test_typed_bytes_contents_work_too(minilm_server: ServerThread, minilm_client: BertmeshClient) -> None:
    request = oip.ModelInferRequest(model_name="all-MiniLM-L6-v2")
    request.inputs.add(name="text", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend([b"a", b"b c"])
    with grpc.insecure_channel(minilm_server.target) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert list(reply.outputs[0].shape) == [2, 384]
    vectors = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 384)
    assert np.allclose(vectors, minilm_client.embed(["a", "b c"]), atol=1e-6)


def test_classification_and_entity_outputs(tiny_servers: dict[str, ServerThread]) -> None:
    with triton.InferenceServerClient(tiny_servers["sequence-classification"].target) as client:
        meta = client.get_model_metadata("sequence-classification")
        assert [o.name for o in meta.outputs] == ["probabilities", "label"]
        result = client.infer("sequence-classification", [text_input([b"good movie", b"bad film"])])
        probs = result.as_numpy("probabilities")
        assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        labels = [x.decode() for x in result.as_numpy("label")]
        assert labels == [["negative", "neutral", "positive"][i] for i in probs.argmax(axis=1)]
    with triton.InferenceServerClient(tiny_servers["token-classification"].target) as client:
        result = client.infer(
            "token-classification", [text_input([b"john lives in paris"])], parameters={"aggregation": "none"}
        )
        entities = json.loads(result.as_numpy("entities")[0])
        with BertmeshClient(tiny_servers["token-classification"].target) as ours:
            expected = ours.classify_tokens(["john lives in paris"], aggregation="none")[0]
        assert [(e["label"], e["start"], e["end"]) for e in entities] == [(e.label, e.start, e.end) for e in expected]
