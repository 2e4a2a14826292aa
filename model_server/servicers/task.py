"""The bertmesh.v1.InferenceService servicer: each RPC decodes, calls the data plane, encodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from model_server.dataplane import DataPlane, deadline_from
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.servicers import task_codec as codec

Context = grpc.aio.ServicerContext[Any, Any]
# EmbedStream requests in flight per stream: enough to keep batches full, few enough to bound memory.
STREAM_WINDOW = 8


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves the task API; `plane()` returns the data plane or raises NotReady while the model loads."""

    def __init__(self, plane: Callable[[], DataPlane]) -> None:
        self._plane = plane

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """See the proto."""
        plane = self._plane()
        return await self._embed(plane, request, deadline_from(context.time_remaining()), wait_for_room=False)

    async def _embed(
        self, plane: DataPlane, request: pb.EmbedRequest, deadline: float | None, *, wait_for_room: bool
    ) -> pb.EmbedResponse:
        plane.check_model(request.model)
        options = codec.embed_options(request, plane.model)
        reply = await plane.embed(list(request.inputs), options, deadline, wait_for_room=wait_for_room)
        return codec.embed_response(reply, request.id, plane.model)

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: Context
    ) -> AsyncIterator[pb.EmbedResponse]:
        """See the proto: answers in order, up to STREAM_WINDOW requests computing at once."""
        plane = self._plane()
        deadline = deadline_from(context.time_remaining())
        window: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | BaseException | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._embed(plane, request, deadline, wait_for_room=True))
                    await window.put(task)
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

    async def Classify(self, request: pb.ClassifyRequest, context: Context) -> pb.ClassifyResponse:
        """See the proto."""
        plane = self._plane()
        plane.check_model(request.model)
        reply = await plane.classify(
            list(request.inputs), codec.classify_options(request), deadline_from(context.time_remaining())
        )
        return codec.classify_response(reply, request.id, plane.model)

    async def ClassifyTokens(self, request: pb.ClassifyTokensRequest, context: Context) -> pb.ClassifyTokensResponse:
        """See the proto."""
        plane = self._plane()
        plane.check_model(request.model)
        reply = await plane.classify_tokens(
            list(request.inputs), codec.token_options(request), deadline_from(context.time_remaining())
        )
        return codec.tokens_response(reply, request.id, plane.model)

    async def FillMask(self, request: pb.FillMaskRequest, context: Context) -> pb.FillMaskResponse:
        """See the proto."""
        plane = self._plane()
        plane.check_model(request.model)
        reply = await plane.fill_mask(
            list(request.inputs), codec.fill_mask_options(request), deadline_from(context.time_remaining())
        )
        return codec.fill_mask_response(reply, request.id, plane.model)

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        """See the proto."""
        plane = self._plane()
        plane.check_model(request.model)
        encodings = await plane.tokenize(list(request.inputs))
        return codec.tokenize_response(encodings, plane.token_string, plane.model)

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: Context) -> pb.ModelInfoResponse:
        """See the proto."""
        return codec.model_info(self._plane().model)
