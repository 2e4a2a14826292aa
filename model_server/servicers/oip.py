"""The inference.GRPCInferenceService servicer (Open Inference Protocol v2) over the same data plane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from model_server.dataplane import DataPlane, deadline_from
from model_server.errors import InvalidArgument, NotFound, NotReady
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc
from model_server.servicers import oip_codec as codec
from model_server.tasks import (
    Aggregation,
    ClassifyOptions,
    EmbedOptions,
    FillMaskOptions,
    Pooling,
    Task,
    TokenClassifyOptions,
)

Context = grpc.aio.ServicerContext[Any, Any]
_TRITON_TYPES = {"FP32": oip.TYPE_FP32, "BYTES": oip.TYPE_STRING}
SERVER_NAME = "bertmesh"
PLATFORM = "bertmesh_pytorch"
_OUTPUTS: dict[Task, list[tuple[str, str, list[int]]]] = {
    Task.EMBEDDING: [("embedding", "FP32", [-1, -1])],
    Task.SEQUENCE_CLASSIFICATION: [("probabilities", "FP32", [-1, -1]), ("label", "BYTES", [-1])],
    Task.TOKEN_CLASSIFICATION: [("entities", "BYTES", [-1])],
    Task.FILL_MASK: [("predictions", "BYTES", [-1])],
}


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
        if name != plane.model.name:
            raise NotFound(f"model_name: {name!r} is not served here; this server serves {plane.model.name!r}")
        if version and version != plane.model.revision:
            raise NotFound(f"model_version: {version!r} is not served; the served version is {plane.model.revision!r}")
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
        meta.inputs.add(name=codec.INPUT_NAME, datatype="BYTES", shape=[-1])
        for name, datatype, shape in _OUTPUTS[plane.model.task]:
            meta.outputs.add(name=name, datatype=datatype, shape=shape)
        return meta

    async def ModelConfig(self, request: oip.ModelConfigRequest, context: Context) -> oip.ModelConfigResponse:
        """Triton's ModelConfig: max_batch_size 0 (bertmesh batches itself), the same tensors as ModelMetadata."""
        plane = self._model(request.name, request.version)
        config = oip.ModelConfig(name=plane.model.name, platform=PLATFORM, backend="bertmesh", max_batch_size=0)
        config.input.add(name=codec.INPUT_NAME, data_type=oip.TYPE_STRING, dims=[-1])
        for name, datatype, shape in _OUTPUTS[plane.model.task]:
            config.output.add(name=name, data_type=_TRITON_TYPES[datatype], dims=shape)
        return oip.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        """Runs the model's task on the texts of the 'text' input."""
        plane = self._model(request.model_name, request.model_version)
        texts = codec.texts_from_request(request)
        params = request.parameters
        truncate = bool(codec.parameter(params, "truncate", bool) or False)
        deadline = deadline_from(context.time_remaining())
        model = plane.model
        outputs: list[codec.OutputTensor]
        if model.task is Task.EMBEDDING:
            pooling = codec.parameter(params, "pooling", str)
            normalize = codec.parameter(params, "normalize", bool)
            options = EmbedOptions(
                pooling=_pooling(pooling) if pooling is not None else model.default_pooling,
                normalize=model.default_normalize if normalize is None else bool(normalize),
                truncate=truncate,
            )
            outputs = codec.embedding_outputs((await plane.embed(texts, options, deadline)).results, model.dimensions)
        elif model.task is Task.SEQUENCE_CLASSIFICATION:
            reply = await plane.classify(texts, ClassifyOptions(truncate=truncate), deadline)
            outputs = codec.classification_outputs(reply.results, len(model.labels))
        elif model.task is Task.TOKEN_CLASSIFICATION:
            aggregation = codec.parameter(params, "aggregation", str)
            token_options = TokenClassifyOptions(
                aggregation=_aggregation(aggregation) if aggregation is not None else Aggregation.SIMPLE,
                truncate=truncate,
            )
            outputs = codec.entities_outputs((await plane.classify_tokens(texts, token_options, deadline)).results)
        else:
            top_k = codec.parameter(params, "top_k", int)
            mask_options = FillMaskOptions(top_k=top_k if isinstance(top_k, int) and top_k else 5, truncate=truncate)
            outputs = codec.fill_mask_outputs((await plane.fill_mask(texts, mask_options, deadline)).results)
        return codec.infer_response(request, model.name, model.revision, codec.select_outputs(outputs, request.outputs))


def _pooling(value: object) -> Pooling:
    try:
        return Pooling(str(value).lower())
    except ValueError:
        raise InvalidArgument(f"parameters['pooling']: {value!r} is not one of mean, cls") from None


def _aggregation(value: object) -> Aggregation:
    try:
        return Aggregation(str(value).lower())
    except ValueError:
        choices = ", ".join(a.value for a in Aggregation)
        raise InvalidArgument(f"parameters['aggregation']: {value!r} is not one of {choices}") from None
