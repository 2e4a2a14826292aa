"""A pass-through OIP v2 gRPC proxy that adds the one RPC perf_analyzer needs and bertmesh lacks: ModelConfig.

perf_analyzer 2.51 calls inference.GRPCInferenceService/ModelConfig before it sends load (to read
max_batch_size); bertmesh answers UNIMPLEMENTED, so perf_analyzer exits with "failed to get model config:
Method not found!". This shim answers ModelConfig itself (max_batch_size 0, input 'text' BYTES [-1], output
'embedding' FP32 [-1, 384]) and forwards every other call to bertmesh as raw bytes (no protobuf parsing).
It is one extra local hop: perf_analyzer numbers for bertmesh through it are a lower bound.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "inference.GRPCInferenceService"
_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _identity(data: bytes) -> bytes:
    return data


def _model_config(model: str, dimensions: int) -> bytes:
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.grpc import service_pb2

    config = mc.ModelConfig(
        name=model,
        max_batch_size=0,
        input=[mc.ModelInput(name="text", data_type=mc.TYPE_STRING, dims=[-1])],
        output=[mc.ModelOutput(name="embedding", data_type=mc.TYPE_FP32, dims=[-1, dimensions])],
    )
    return bytes(service_pb2.ModelConfigResponse(config=config).SerializeToString())


async def serve(port: int, upstream: str, model: str, dimensions: int = 384) -> None:
    """Runs the shim on 127.0.0.1:port until killed."""
    channel = grpc.aio.insecure_channel(upstream, options=_OPTIONS)
    config = _model_config(model, dimensions)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            method = details.method
            if not method.startswith(f"/{SERVICE}/"):
                return None
            if method.endswith("/ModelConfig"):

                async def answer(request: bytes, context: Any) -> bytes:
                    return config

                return grpc.unary_unary_rpc_method_handler(answer, _identity, _identity)
            call = channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)

            async def forward(request: bytes, context: Any) -> bytes:
                return bytes(await call(request, timeout=context.time_remaining()))

            return grpc.unary_unary_rpc_method_handler(forward, _identity, _identity)

    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
