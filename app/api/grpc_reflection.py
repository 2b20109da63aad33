"""gRPC server reflection on the API server (`grpc_api.reflection`), as Centrifugo's
`reflection.Register` (internal/app/grpc.go) gives it: tools such as grpcurl, Postman or
buf curl list the services, fetch their .proto descriptors and call them without the
.proto file at hand.

grpc-go's `reflection.Register` serves both protocol versions, `grpc.reflection.v1` and
the older `grpc.reflection.v1alpha`, and lists every service of the server, the two
reflection services included. grpcio-reflection implements v1alpha only; v1 is the same
protocol under another package name (same messages, same field numbers: grpc's
src/proto/grpc/reflection/v1/reflection.proto), so the one servicer answers both, and the
v1 file descriptor is the v1alpha one renamed, so that FindSymbol works for every listed
name. Clients that ask v1 first (grpcurl, buf curl) get an answer without falling back.

The descriptors live in a private pool (the served files and the two reflection files),
not in protobuf's process-wide default pool: nothing else in the process sees the renamed
v1 file, and a later import of a real v1 module cannot clash with it.

No API key: Centrifugo's `grpc_api.key` check is a unary interceptor, and reflection is a
streaming call, so reflection answers without the key there too; the API methods
themselves still need it (app/api/grpc.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

__all__ = ["V1_SERVICE", "V1ALPHA_SERVICE", "add_reflection"]

V1ALPHA_SERVICE: str = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
_V1ALPHA_PACKAGE = v1alpha.DESCRIPTOR.package
_V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{_V1_PACKAGE}.ServerReflection"
_METHOD = "ServerReflectionInfo"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: the v1alpha file under the v1 package, with the
    v1 file's name and options (as grpc-go's generated v1 descriptor has them)."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1_PACKAGE
    proto.options.Clear()  # v1alpha's are `deprecated` and name the v1alpha packages
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return proto


def _pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool with `files` (dependencies first) and both reflection files."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        pool.AddSerializedFile(fd.serialized_pb)
        added.add(fd.name)

    for fd in (*files, v1alpha.DESCRIPTOR):
        add(fd)
    pool.Add(_v1_file())
    return pool


def add_reflection(server: grpc.aio.Server, files: Iterable[FileDescriptor]) -> None:
    """Serve reflection (v1 and v1alpha) on `server`, listing the services declared in
    `files` and the two reflection services. Call before `server.start()`."""
    files = tuple(files)
    names = [s.full_name for fd in files for s in fd.services_by_name.values()]
    servicer = reflection.aio.ReflectionServicer(
        [*names, V1_SERVICE, V1ALPHA_SERVICE], pool=_pool(files)
    )
    # grpcio-reflection's enable_server_reflection registers v1alpha only; the same handler
    # serves v1, whose messages are identical on the wire.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(service, {_METHOD: handler})
            for service in (V1ALPHA_SERVICE, V1_SERVICE)
        )
    )
