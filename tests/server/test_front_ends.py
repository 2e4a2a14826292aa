"""Every task is served by every front end meant to serve it: the bertmesh.v1 task API and OIP v2 ModelInfer."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc
from model_server.servicers.task import InferenceServicer
from model_server.tasks import SPECS, Task
from model_server.tasks.fill_mask import DEFAULT_TOP_K
from tests.server.conftest import TASKS
from tests.server.harness import ServerThread

TASK_SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]
# The task API's RPCs that serve no single task.
NOT_TASKS = {"EmbedStream", "Tokenize", "ModelInfo"}
TEXTS = {task: ["john lives in paris", "the weather is good"] for task in TASKS}
TEXTS["fill-mask"] = ["john lives in [MASK]", "the [MASK] is good"]
QUERY = "where does john live"


def test_every_task_has_a_module_for_each_front_end_and_every_task_rpc_a_task() -> None:
    assert set(SPECS) == set(Task) and {t.value for t in Task} == set(TASKS)
    rpcs = {spec.api.rpc for spec in SPECS.values()}
    assert rpcs == {m.name for m in TASK_SERVICE.methods} - NOT_TASKS
    for spec in SPECS.values():
        assert spec.task is Task(spec.task.value)
        assert callable(getattr(InferenceServicer, spec.api.rpc))
        assert spec.oip.outputs, spec.task


@pytest.mark.parametrize("task", TASKS)
def test_the_task_api_and_model_infer_both_serve_the_task(tiny_servers: dict[str, ServerThread], task: str) -> None:
    spec = SPECS[Task(task)]
    texts = TEXTS[task]
    method = TASK_SERVICE.methods_by_name[spec.api.rpc]
    request_class = message_factory.GetMessageClass(method.input_type)
    infer = oip.ModelInferRequest(model_name=task)
    if task == "rerank":  # the texts are documents, scored against a query
        request = request_class(query=QUERY, documents=texts, id="req-1")
        infer.parameters["query"].string_param = QUERY
    else:
        request = request_class(inputs=texts, id="req-1")
    infer.inputs.add(name="text", datatype="BYTES", shape=[len(texts)]).contents.bytes_contents.extend(
        t.encode() for t in texts
    )
    with grpc.insecure_channel(tiny_servers[task].target) as channel:
        reply = getattr(pb_grpc.InferenceServiceStub(channel), spec.api.rpc)(request, timeout=30)
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(oip.ModelMetadataRequest(name=task), timeout=30)
        answer = stub.ModelInfer(infer, timeout=30)
    assert (reply.model, reply.id, reply.usage.tokens > 0) == (task, "req-1", True)
    answered = reply.embeddings if task == "embedding" else reply.results
    assert len(answered) == len(texts)
    declared = [(o.name, o.datatype) for o in spec.oip.outputs]
    assert [(o.name, o.datatype) for o in meta.outputs] == declared
    assert [(o.name, o.datatype) for o in answer.outputs] == declared
    assert all(o.shape[0] == len(texts) for o in answer.outputs)


def test_fill_mask_top_k_defaults_alike_in_both_front_ends(tiny_servers: dict[str, ServerThread]) -> None:
    infer = oip.ModelInferRequest(model_name="fill-mask")
    infer.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"the [MASK] is good")
    with grpc.insecure_channel(tiny_servers["fill-mask"].target) as channel:
        reply = pb_grpc.InferenceServiceStub(channel).FillMask(
            pb.FillMaskRequest(inputs=["the [MASK] is good"]), timeout=30
        )
        answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=30)
    ours = [c.token_id for c in reply.results[0].masks[0].candidates]
    raw = answer.raw_output_contents[0]
    theirs = [c["token_id"] for c in json.loads(raw[4:])[0]]
    assert len(ours) == DEFAULT_TOP_K and ours == theirs
    assert np.all(np.diff([c.score for c in reply.results[0].masks[0].candidates]) <= 0)
