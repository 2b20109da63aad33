"""Unidirectional gRPC stream: `centrifugal.centrifugo.unistream.CentrifugoUniStream`
(research §1.1, §1.12), on its own gRPC server at `uni_grpc.address:uni_grpc.port` (11000)
when `uni_grpc.enabled`; one per worker, sharing the port with SO_REUSEPORT.

`Consume(ConnectRequest) returns (stream Push)`: each Push is the bare Protobuf Push the
client protocol codec encodes (proto/uni.proto keeps its field numbers), sent without the
varint length prefix because gRPC frames messages itself. As in Centrifugo, the stream
carries no pings (HTTP/2 has its own keepalive); a disconnect is a `disconnect` push, then
the stream ends with status OK. Call metadata serves as the connection's HTTP headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from multidict import CIMultiDict

from app.api.gen import uni_pb2 as pb
from app.api.grpc import STOP_GRACE, add_port, bind_target, server_options
from app.config import Config
from app.errors import Disconnect
from app.node import NODE_KEY, Node
from app.protocol import Codec, DecodeError
from app.protocol.protobuf import PROTOBUF_UNI
from app.transport import KeepsAlive, Transport
from app.transports import admission
from app.transports.uni_connect import connect, new_client

log = logging.getLogger("centrifugo.uni_grpc")

SERVICE = "centrifugal.centrifugo.unistream.CentrifugoUniStream"


def split_delimited(frame: bytes) -> list[bytes]:
    """The messages of a varint-delimited frame (what the Protobuf codec writes)."""
    out: list[bytes] = []
    pos, end = 0, len(frame)
    while pos < end:
        length = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise DecodeError("truncated varint")
            b = frame[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if pos + length > end:
            raise DecodeError("message longer than the frame")
        out.append(frame[pos : pos + length])
        pos += length
    return out


class UniGrpcTransport:
    name = "uni_grpc"
    codec: Codec = PROTOBUF_UNI
    unidirectional = True
    disconnect_push = True
    keepalive = "http2 keepalive"  # no protocol pings (app/transport.py's KeepsAlive)

    __slots__ = ("_context", "done")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.done = asyncio.Event()  # set when the client closes the connection

    async def write(self, frame: bytes) -> None:
        for msg in split_delimited(frame):
            # An empty Push is a ping: Centrifugo sends none over gRPC.
            if msg:
                await self._context.write(msg)

    async def close(self, disconnect: Disconnect) -> None:
        self.done.set()


def connect_params(req: pb.ConnectRequest) -> dict[str, Any]:
    """The ConnectRequest as the client's connect params (the JSON field names)."""
    params: dict[str, Any] = {}
    if req.token:
        params["token"] = req.token
    if req.data:
        params["data"] = req.data
    if req.name:
        params["name"] = req.name
    if req.version:
        params["version"] = req.version
    if req.subs:
        params["subs"] = {
            ch: {"recover": s.recover, "epoch": s.epoch, "offset": s.offset}
            for ch, s in req.subs.items()
        }
    return params


class UniStreamService:
    def __init__(self, node: Node) -> None:
        self.node = node

    def handler(self) -> grpc.GenericRpcHandler:
        consume = grpc.unary_stream_rpc_method_handler(
            self.consume,
            request_deserializer=pb.ConnectRequest.FromString,
            # Pushes are already encoded: bytes go out as they are.
            response_serializer=bytes,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Consume": consume})

    async def consume(self, request: pb.ConnectRequest, context: grpc.aio.ServicerContext) -> None:
        node = self.node
        refused = admission.check(node, rate=False)  # no rate limit here, as Centrifugo
        if refused is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, refused.reason)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
        )
        transport = UniGrpcTransport(context)
        client = new_client(node, transport, headers)
        try:
            if await connect(client, connect_params(request)):
                await transport.done.wait()
        finally:
            # Also on cancellation: the client hung up.
            await client.transport_closed()


async def start_uni_grpc_server(node: Node, cfg: Config) -> grpc.aio.Server:
    ucfg = cfg.uni_grpc
    server = grpc.aio.server(options=server_options(ucfg.max_receive_message_size))
    server.add_generic_rpc_handlers((UniStreamService(node).handler(),))
    target = bind_target(ucfg.address, ucfg.port)
    add_port(server, target, ucfg.tls, "uni_grpc")
    await server.start()
    log.info("serving uni_grpc on %s", target)
    return server


def add_uni_grpc(app: web.Application, cfg: Config) -> None:
    """Run the uni_grpc server alongside the app when `uni_grpc.enabled`."""
    if not cfg.uni_grpc.enabled:
        return

    async def uni_grpc_ctx(app: web.Application) -> AsyncIterator[None]:
        server = await start_uni_grpc_server(app[NODE_KEY], cfg)
        yield
        await server.stop(STOP_GRACE)

    app.cleanup_ctx.append(uni_grpc_ctx)


# The contracts it satisfies (app/transport.py), checked by mypy.
_transport: type[Transport] = UniGrpcTransport
_keeps_alive: type[KeepsAlive] = UniGrpcTransport
