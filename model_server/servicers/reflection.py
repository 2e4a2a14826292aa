"""Server reflection under both names clients ask for: `grpc.reflection.v1` (grpcurl and current tools try it
first) and `grpc.reflection.v1alpha` (older tools).

grpcio-reflection ships v1alpha only. The v1 protocol is the same messages under another package, so one
servicer answers both; the v1 descriptors are v1alpha's, renamed, so that v1 can describe itself too.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
SERVICE_NAMES = (f"{V1_PACKAGE}.ServerReflection", reflection.SERVICE_NAME)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """reflection.proto as grpc.reflection.v1: v1alpha's file with its package and type references renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = V1_PACKAGE
    old, new = f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # assigning even '' would mark a scalar field as typed
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    return proto


def reflection_pool(files: Sequence[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """One pool describing the given files and both reflection services (the served protos may live in private
    pools, see hack/gen_protos.py)."""
    pool = descriptor_pool.DescriptorPool()
    for file in (reflection_pb2.DESCRIPTOR, *files):
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(_v1_file())
    return pool


def enable_reflection(server: grpc.aio.Server, services: Sequence[str], files: Sequence[FileDescriptor]) -> None:
    """Serves reflection (v1 and v1alpha) listing `services` and the reflection services themselves."""
    servicer = reflection.aio.ReflectionServicer((*services, *SERVICE_NAMES), pool=reflection_pool(files))
    # The same wire messages under either name: v1alpha's classes parse and write both.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for name in SERVICE_NAMES:
        handlers = {"ServerReflectionInfo": handler}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
