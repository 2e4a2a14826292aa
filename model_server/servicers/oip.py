"""The inference.GRPCInferenceService servicer (Open Inference Protocol v2) over the same data plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from model_server import oip_tensors as tensors
from model_server.dataplane import DataPlane, deadline_from
from model_server.errors import NotReady
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc
from model_server.tasks import spec
from model_server.validation import truncation

Context = grpc.aio.ServicerContext[Any, Any]

_TRITON_TYPES = {"FP32": oip.TYPE_FP32, "BYTES": oip.TYPE_STRING}
SERVER_NAME = "bertmesh"
PLATFORM = "bertmesh_pytorch"


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves OIP v2 so Triton/KServe clients and perf_analyzer work unmodified."""

    def __init__(self, plane: Callable[[], DataPlane], version: str) -> None:
        self._plane = plane
        self._version = version

    def _ready_plane(self) -> DataPlane | None:
        try:
            return self._plane()
        except NotReady:
            return None

    def _model(self, name: str, version: str) -> DataPlane:
        plane = self._plane()
        plane.check_model(name, "model_name", required=True)
        plane.check_version(version, "model_version")
        return plane

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        """The process answers."""
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        """Ready once the model is warm and until shutdown starts."""
        return oip.ServerReadyResponse(ready=self._ready_plane() is not None)

    async def ModelReady(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        """Ready for the served model's name; NOT_FOUND for another."""
        plane = self._ready_plane()
        if plane is None:
            return oip.ModelReadyResponse(ready=False)
        self._model(request.name, request.version)
        return oip.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Context) -> oip.ServerMetadataResponse:
        """Server name and version."""
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Context) -> oip.ModelMetadataResponse:
        """The BYTES input 'text' [-1] and the task's outputs."""
        plane = self._model(request.name, request.version)
        meta = oip.ModelMetadataResponse(name=plane.model.name, versions=[plane.model.revision], platform=PLATFORM)
        meta.inputs.add(name=tensors.INPUT_NAME, datatype="BYTES", shape=[-1])
        for out in spec(plane.model.task).oip.outputs:
            meta.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        return meta

    async def ModelConfig(self, request: oip.ModelConfigRequest, context: Context) -> oip.ModelConfigResponse:
        """Triton's ModelConfig: max_batch_size 0 (bertmesh batches itself), the same tensors as ModelMetadata."""
        plane = self._model(request.name, request.version)
        config = oip.ModelConfig(name=plane.model.name, platform=PLATFORM, backend="bertmesh", max_batch_size=0)
        config.input.add(name=tensors.INPUT_NAME, data_type=oip.TYPE_STRING, dims=[-1])
        for out in spec(plane.model.task).oip.outputs:
            config.output.add(name=out.name, data_type=_TRITON_TYPES[out.datatype], dims=out.shape)
        return oip.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        """Runs the model's task on the texts of the 'text' input."""
        plane = self._model(request.model_name, request.model_version)
        texts = tensors.texts_from_request(request)
        model = plane.model
        requested = tensors.parameter(request.parameters, "truncate", bool)
        truncate = truncation(None if requested is None else bool(requested), model.limits)
        task = spec(model.task).oip
        options = task.options(request.parameters, truncate, model)
        reply = await plane.infer(texts, options, deadline_from(context.time_remaining()))
        outputs = tensors.select_outputs(task.tensors(reply.results, model), request.outputs)
        return tensors.infer_response(request, model.name, model.revision, outputs)
