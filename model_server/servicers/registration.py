"""Registers a servicer from its proto service descriptor, with deserializers that never raise.

grpc answers a request it cannot parse (e.g. invalid UTF-8 in a string field) with INTERNAL, and one over its
size limit with a bare RESOURCE_EXHAUSTED. Here parsing never fails: an unparsable or oversized message becomes
an UndecodableRequest, which the status interceptor answers INVALID_ARGUMENT with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """Stands in for a request message that could not be parsed or was too large."""

    type_name: str
    reason: str


def safe_deserializer(message_type: type[Message], max_bytes: int) -> Callable[[bytes], Any]:
    """A deserializer returning the parsed message or an UndecodableRequest, never raising."""
    name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | UndecodableRequest:
        if len(data) > max_bytes:
            return UndecodableRequest(
                name,
                f"request: {len(data)} bytes exceed max_message_bytes={max_bytes}; send fewer or shorter inputs",
            )
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return UndecodableRequest(name, f"request is not a valid {name}: {exc}")

    return deserialize


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, max_bytes: int) -> None:
    """Adds every method of `service`, implemented by the same-named methods of `servicer`."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name)
        kwargs: dict[str, Any] = {
            "request_deserializer": safe_deserializer(request_type, max_bytes),
            "response_serializer": response_type.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
