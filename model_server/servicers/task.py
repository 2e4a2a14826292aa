"""The bertmesh.v1.InferenceService servicer: each RPC decodes, calls the data plane, encodes.

The task RPCs share one path: the task's module (model_server.tasks) turns the request into options and the
results into the response; the data plane's one generic call runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from model_server.dataplane import DataPlane, deadline_from
from model_server.errors import ServingError
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.servicers import task_codec as codec
from model_server.tasks import SPECS, Task

Context = grpc.aio.ServicerContext[Any, Any]

# EmbedStream requests in flight per stream: enough to keep batches full, few enough to bound memory.
STREAM_WINDOW = 8


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves the task API; `plane()` returns the data plane or raises NotReady while the model loads."""

    def __init__(self, plane: Callable[[], DataPlane]) -> None:
        self._plane = plane

    async def _task(
        self, plane: DataPlane, task: Task, request: Any, deadline: float | None, *, wait_for_room: bool = False
    ) -> Any:
        """Decode, call, encode: the path of every task RPC."""
        plane.check_model(request.model)
        spec = SPECS[task]
        options = spec.api.options(request, plane.model)
        reply = await plane.infer(list(request.inputs), options, deadline, wait_for_room=wait_for_room)
        return codec.task_response(spec, reply, request.id, plane.model)

    async def _call(self, task: Task, request: Any, context: Context) -> Any:
        return await self._task(self._plane(), task, request, deadline_from(context.time_remaining()))

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """See the proto."""
        response: pb.EmbedResponse = await self._call(Task.EMBEDDING, request, context)
        return response

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: Context
    ) -> AsyncIterator[pb.EmbedResponse]:
        """See the proto: answers in order, up to STREAM_WINDOW requests computing at once."""
        plane = self._plane()
        deadline = deadline_from(context.time_remaining())
        window: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | BaseException | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                index = 0
                async for request in request_iterator:
                    embed = self._stream_item(plane, index, request, deadline)
                    await window.put(asyncio.create_task(embed))
                    index += 1
                await window.put(None)
            except Exception as exc:  # a bad request ends the stream after the answers before it
                await window.put(exc)

        reader = asyncio.create_task(read())
        try:
            while (item := await window.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield await item
        finally:
            reader.cancel()
            while not window.empty():
                leftover = window.get_nowait()
                if isinstance(leftover, asyncio.Task):
                    leftover.cancel()

    async def _stream_item(self, plane: DataPlane, index: int, request: Any, deadline: float | None) -> Any:
        """One EmbedStream message's reply; an error names the message, since each has its own inputs[0]."""
        try:
            return await self._task(plane, Task.EMBEDDING, request, deadline, wait_for_room=True)
        except ServingError as exc:
            raise type(exc)(f"stream message {index}: {exc.message}") from exc

    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        """See the proto."""
        response: pb.ClassifyResponse = await self._call(Task.SEQUENCE_CLASSIFICATION, request, context)
        return response

    async def ClassifyTokens(self, request: pb.ClassifyTokensRequest, context: Context) -> pb.ClassifyTokensResponse:
        """See the proto."""
        response: pb.ClassifyTokensResponse = await self._call(Task.TOKEN_CLASSIFICATION, request, context)
        return response

    async def FillMask(self, request: pb.FillMaskRequest, context: Context) -> pb.FillMaskResponse:
        """See the proto."""
        response: pb.FillMaskResponse = await self._call(Task.FILL_MASK, request, context)
        return response

    async def Rerank(self, request: pb.RerankRequest, context: Context) -> pb.RerankResponse:
        """See the proto: served by cross-encoder and embedding models alike (the data plane picks the method)."""
        plane = self._plane()
        plane.check_model(request.model)
        deadline = deadline_from(context.time_remaining())
        reply = await plane.rerank(request.query, list(request.documents), truncate=request.truncate, deadline=deadline)
        return codec.rerank_response(reply, request, plane.model)

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        """See the proto."""
        plane = self._plane()
        plane.check_model(request.model)
        encodings = await plane.tokenize(list(request.inputs))
        return codec.tokenize_response(encodings, plane.token_string, plane.model)

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: Context) -> pb.ModelInfoResponse:
        """See the proto."""
        return codec.model_info(self._plane().model)
