"""gRPC server reflection on the API server (`grpc_api.reflection`), against a real server,
with grpcio-reflection's own client (`ProtoReflectionDescriptorDatabase`) and raw
ServerReflection streams.

As Centrifugo's `reflection.Register` (grpc-go): both reflection protocol versions are
served, the list names the API service and the two reflection services, and reflection
answers without `grpc_api.key` (the key is a unary interceptor there; reflection is a
stream) while the API methods still need it. The server runs with TLS, so all of it is
proved over TLS too.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from app import VERSION_STRING
from app.api.gen import api_pb2 as pb
from tests.support.tls_certs import self_signed_pem

from .helpers import ServerHandle, free_port

API = "centrifugal.centrifugo.api.CentrifugoApi"  # proto/api.proto: package + service
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
KEY = "gk-" + secrets.token_hex(8)
CERT, CERT_KEY = self_signed_pem()


def config(reflection: bool, **grpc_api: Any) -> dict[str, Any]:
    return {
        # Reflection does not touch the engine: one pass (the memory one) is enough.
        "engine": {"type": "memory"},
        "grpc_api": {
            "enabled": True,
            "address": "127.0.0.1",
            "port": free_port(),
            "reflection": reflection,
            **grpc_api,
        },
    }


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    tls = {"enabled": True, "cert_pem": CERT.decode(), "key_pem": CERT_KEY.decode()}
    return server_factory(config(True, key=KEY, tls=tls))


@pytest.fixture(scope="module")
def plain_server(server_factory: Any) -> ServerHandle:
    """Reflection off (the default), no TLS."""
    return server_factory(config(False))


def target(server: ServerHandle) -> str:
    return f"127.0.0.1:{server.config['grpc_api']['port']}"


@pytest.fixture
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    creds = grpc.ssl_channel_credentials(root_certificates=CERT)
    with grpc.secure_channel(target(server), creds) as ch:
        yield ch


@pytest.fixture
def fetched(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    """A pool that resolves every name through the server's reflection (no local .proto)."""
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def reflect(channel: grpc.Channel, *requests: v1alpha.ServerReflectionRequest) -> list[Any]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def test_lists_the_api_and_both_reflection_services(channel: grpc.Channel) -> None:
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert list(services) == [API, V1, V1ALPHA]


def test_describes_every_api_method(fetched: descriptor_pool.DescriptorPool) -> None:
    service = fetched.FindServiceByName(API)
    methods = {m.name: m for m in service.methods}
    assert {"Publish", "Broadcast", "Info", "History", "Presence", "Batch"} <= methods.keys()
    # Exactly the service of our proto/api.proto, request and response types included.
    local = pb.DESCRIPTOR.services_by_name["CentrifugoApi"]
    assert {m.name: (m.input_type.full_name, m.output_type.full_name) for m in local.methods} == {
        m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods
    }
    assert methods["Info"].input_type.full_name == "centrifugal.centrifugo.api.InfoRequest"


def test_fetched_descriptor_calls_info(
    channel: grpc.Channel, fetched: descriptor_pool.DescriptorPool
) -> None:
    """Message classes built from the fetched descriptor only, called as a generic method:
    what grpcurl does. Reflection needed no key; the API method does."""
    info = fetched.FindServiceByName(API).methods_by_name["Info"]
    request_cls = message_factory.GetMessageClass(info.input_type)
    response_cls = message_factory.GetMessageClass(info.output_type)
    call = channel.unary_unary(
        f"/{API}/Info",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    response = call(request_cls(), metadata=(("authorization", f"apikey {KEY}"),), timeout=10)
    assert response.result.nodes[0].version == VERSION_STRING
    with pytest.raises(grpc.RpcError) as e:
        call(request_cls(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_v1_protocol_from_its_fetched_descriptor(
    channel: grpc.Channel, fetched: descriptor_pool.DescriptorPool
) -> None:
    """The v1 service is described by the server itself; messages built from that
    description list the services over v1 (grpcurl's first try)."""
    method = fetched.FindServiceByName(V1).methods_by_name["ServerReflectionInfo"]
    assert method.containing_service.file.name == "grpc/reflection/v1/reflection.proto"
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.stream_stream(
        f"/{V1}/ServerReflectionInfo",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    (response,) = list(call(iter([request_cls(list_services="")]), timeout=10))
    assert [s.name for s in response.list_services_response.service] == [API, V1, V1ALPHA]


def test_unknown_symbol_is_not_found(channel: grpc.Channel) -> None:
    (response,) = reflect(channel, v1alpha.ServerReflectionRequest(file_containing_symbol="x.Y"))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_file_by_name_serves_the_api_file(channel: grpc.Channel) -> None:
    (response,) = reflect(
        channel, v1alpha.ServerReflectionRequest(file_by_filename=pb.DESCRIPTOR.name)
    )
    (served,) = response.file_descriptor_response.file_descriptor_proto
    assert served == pb.DESCRIPTOR.serialized_pb


@pytest.mark.parametrize("service", [V1ALPHA, V1])
def test_off_by_default_unimplemented(plain_server: ServerHandle, service: str) -> None:
    with grpc.insecure_channel(target(plain_server)) as ch:
        call = ch.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=v1alpha.ServerReflectionRequest.SerializeToString,
            response_deserializer=v1alpha.ServerReflectionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([v1alpha.ServerReflectionRequest(list_services="")]), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The API itself is served.
        info = ch.unary_unary(
            f"/{API}/Info",
            request_serializer=pb.InfoRequest.SerializeToString,
            response_deserializer=pb.InfoResponse.FromString,
        )
        assert info(pb.InfoRequest(), timeout=10).result.nodes[0].version == VERSION_STRING
