"""Server API over gRPC: `centrifugal.centrifugo.api.CentrifugoApi` (research §2.4).

Served by grpcio's asyncio server on `grpc_api.address:grpc_api.port` (default 10000) when
`grpc_api.enabled`; one server per worker process, all bound to the same port with
SO_REUSEPORT so the kernel spreads calls over the workers. Every method runs through
`ApiExecutor`, so semantics and error codes are those of the HTTP API: request messages are
turned into the executor's params dicts and its result dicts back into messages.

`bytes` payloads stay bytes both ways: request `data`/`info`/`params` reach the executor as
the bytes received (as a JSON body's payloads do, as Raw spans) and stored payloads come back
unparsed, so binary publications work over gRPC although they cannot be shown in a JSON
answer.

Auth: with `grpc_api.key` set, calls need metadata `authorization: apikey <key>`.
`grpc_api.reflection` adds server reflection (app/api/grpc_reflection.py), which answers
without the key as in Centrifugo.
Errors go in the response's `error` field, or as a gRPC status (with the `Error` message
in the status details) under `grpc_api.error_mode: transport` or per call with metadata
`x-centrifugo-error-mode: transport`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from aiohttp import web
from google.protobuf import any_pb2
from google.protobuf.message import Message

from app.api.executor import ApiExecutor
from app.api.gen import api_pb2 as pb
from app.api.grpc_reflection import add_reflection
from app.config import Config, TLSConfig
from app.errors import ClientError
from app.models import ClientInfo, Publication
from app.node import NODE_KEY
from app.protocol.protobuf import varint
from app.tls import load_pem

if TYPE_CHECKING:
    from app.node import Node

log = logging.getLogger("centrifugo.grpc_api")

SERVICE = pb.DESCRIPTOR.services_by_name["CentrifugoApi"].full_name
STOP_GRACE = 1.0  # seconds in-flight calls get when the worker stops

# API error code -> gRPC status in transport error mode (Centrifugo's MapErrorToGRPCCode).
GRPC_CODES: dict[int, grpc.StatusCode] = {
    100: grpc.StatusCode.INTERNAL,
    102: grpc.StatusCode.NOT_FOUND,
    104: grpc.StatusCode.NOT_FOUND,
    107: grpc.StatusCode.INVALID_ARGUMENT,
    108: grpc.StatusCode.INVALID_ARGUMENT,
    112: grpc.StatusCode.OUT_OF_RANGE,
    113: grpc.StatusCode.ALREADY_EXISTS,
}


# --------------------------------------------------------------------------------------------
# shared by the gRPC servers (this one and uni_grpc)


def bind_target(address: str, port: int) -> str:
    """`host:port` for grpcio; an empty address listens on every interface."""
    host = address or "[::]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def server_options(max_receive_message_size: int) -> list[tuple[str, Any]]:
    # Each worker binds the same port; the kernel balances connections between them.
    options: list[tuple[str, Any]] = [("grpc.so_reuseport", 1)]
    if max_receive_message_size > 0:
        options.append(("grpc.max_receive_message_length", max_receive_message_size))
    return options


def add_port(server: grpc.aio.Server, target: str, tls: TLSConfig, what: str) -> None:
    """Listen on `target`, with TLS (and client certificates if a client CA is set) when
    `tls.enabled`. Raises RuntimeError when the address cannot be bound."""
    if not tls.enabled:
        server.add_insecure_port(target)
        return
    cert = load_pem(tls.cert_pem, f"{what}.tls.cert_pem")
    key = load_pem(tls.key_pem, f"{what}.tls.key_pem")
    client_ca = (
        load_pem(tls.client_ca_pem, f"{what}.tls.client_ca_pem") if tls.client_ca_pem else None
    )
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
    server.add_secure_port(target, creds)


# --------------------------------------------------------------------------------------------
# messages <-> executor dicts


def _value(fd: Any, value: Any) -> Any:
    if fd.type == fd.TYPE_MESSAGE:
        return message_params(value)
    return value


def message_params(msg: Message) -> dict[str, Any]:
    """A request message as the executor's params: set fields only, snake_case keys."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        mt = fd.message_type
        if mt is not None and mt.GetOptions().map_entry:
            vfd = mt.fields_by_name["value"]
            out[fd.name] = {k: _value(vfd, v) for k, v in value.items()}
        elif fd.is_repeated:
            out[fd.name] = [_value(fd, v) for v in value]
        else:
            out[fd.name] = _value(fd, value)
    return out


def _model_dict(value: Any) -> Any:
    if type(value) is Publication:
        out: dict[str, Any] = {"data": value.data, "offset": value.offset, "tags": value.tags}
        if value.info is not None:
            out["info"] = _model_dict(value.info)
        return out
    if type(value) is ClientInfo:
        return {
            "user": value.user,
            "client": value.client,
            "conn_info": value.conn_info,
            "chan_info": value.chan_info,
        }
    return value


def _scalar(fd: Any, value: Any) -> Any:
    if fd.type == fd.TYPE_BYTES and type(value) is orjson.Fragment:
        return orjson.dumps(value)  # the raw JSON bytes it wraps
    return value


def fill(msg: Message, values: dict[str, Any]) -> None:
    """Set `msg` from an executor result dict (unknown keys and None values skipped)."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        fd = fields.get(key)
        if fd is None or value is None:
            continue
        mt = fd.message_type
        if mt is not None and mt.GetOptions().map_entry:
            target = getattr(msg, key)
            vfd = mt.fields_by_name["value"]
            for k, v in value.items():
                if vfd.message_type is not None:
                    fill(target[k], _model_dict(v))
                else:
                    target[k] = _scalar(vfd, v)
        elif fd.is_repeated:
            target = getattr(msg, key)
            if mt is not None:
                for v in value:
                    fill(target.add(), _model_dict(v))
            else:
                target.extend(value)
        elif mt is not None:
            sub = getattr(msg, key)
            sub.SetInParent()  # an empty result is still a result
            fill(sub, _model_dict(value))
        else:
            setattr(msg, key, _scalar(fd, value))


class GrpcExecutor(ApiExecutor):
    """ApiExecutor whose history and presence keep payloads as bytes: a gRPC answer can
    carry binary data that the JSON rendering has to refuse."""

    def _render_info(self, info: ClientInfo) -> Any:
        return info

    def _render_publication(self, pub: Publication) -> Any:
        return pub

    def _render_payload(self, data: bytes) -> Any:
        return data


# --------------------------------------------------------------------------------------------
# the service

# gRPC method -> (executor method, request class, response class)
METHODS: dict[str, tuple[str, type[Message], type[Message]]] = {
    "Batch": ("batch", pb.BatchRequest, pb.BatchResponse),
    "Publish": ("publish", pb.PublishRequest, pb.PublishResponse),
    "Broadcast": ("broadcast", pb.BroadcastRequest, pb.BroadcastResponse),
    "Subscribe": ("subscribe", pb.SubscribeRequest, pb.SubscribeResponse),
    "Unsubscribe": ("unsubscribe", pb.UnsubscribeRequest, pb.UnsubscribeResponse),
    "Disconnect": ("disconnect", pb.DisconnectRequest, pb.DisconnectResponse),
    "Presence": ("presence", pb.PresenceRequest, pb.PresenceResponse),
    "PresenceStats": ("presence_stats", pb.PresenceStatsRequest, pb.PresenceStatsResponse),
    "History": ("history", pb.HistoryRequest, pb.HistoryResponse),
    "HistoryRemove": ("history_remove", pb.HistoryRemoveRequest, pb.HistoryRemoveResponse),
    "Info": ("info", pb.InfoRequest, pb.InfoResponse),
    "RPC": ("rpc", pb.RPCRequest, pb.RPCResponse),
    "Refresh": ("refresh", pb.RefreshRequest, pb.RefreshResponse),
    "Channels": ("channels", pb.ChannelsRequest, pb.ChannelsResponse),
    "MapPublish": ("map_publish", pb.MapPublishRequest, pb.MapPublishResponse),
    "MapRemove": ("map_remove", pb.MapRemoveRequest, pb.MapRemoveResponse),
    "MapReadState": ("map_read_state", pb.MapReadStateRequest, pb.MapReadStateResponse),
    "MapReadStream": ("map_read_stream", pb.MapReadStreamRequest, pb.MapReadStreamResponse),
    "MapStats": ("map_stats", pb.MapStatsRequest, pb.MapStatsResponse),
    "MapClear": ("map_clear", pb.MapClearRequest, pb.MapClearResponse),
    "SharedPollPublish": (
        "shared_poll_publish",
        pb.SharedPollPublishRequest,
        pb.SharedPollPublishResponse,
    ),
}


def status_details(status: grpc.StatusCode, err: pb.Error) -> bytes:
    """A serialized google.rpc.Status carrying `err`, for `grpc-status-details-bin`."""
    detail = any_pb2.Any()
    detail.Pack(err)
    # google.rpc.Status: int32 code = 1; string message = 2; repeated Any details = 3.
    message = err.message.encode()
    packed = detail.SerializeToString()
    return (
        b"\x08"
        + varint(status.value[0])
        + b"\x12"
        + varint(len(message))
        + message
        + b"\x1a"
        + varint(len(packed))
        + packed
    )


class ApiService:
    """The CentrifugoApi methods as one generic handler over ApiExecutor."""

    def __init__(self, node: Node, cfg: Config) -> None:
        self.executor = GrpcExecutor(node)
        gcfg = cfg.grpc_api
        self._auth = ("apikey " + gcfg.key).encode() if gcfg.key else None
        self._transport_errors = gcfg.error_mode == "transport"

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._method(method, resp_cls),
                request_deserializer=req_cls.FromString,
                response_serializer=resp_cls.SerializeToString,
            )
            for name, (method, req_cls, resp_cls) in METHODS.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _method(self, method: str, resp_cls: type[Message]) -> Any:
        async def call(request: Message, context: grpc.aio.ServicerContext) -> Message:
            metadata = context.invocation_metadata() or ()
            if self._auth is not None and not self._authorized(metadata):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
            resp = resp_cls()
            try:
                result = await self.executor.call(method, message_params(request))
            except ClientError as e:
                err = pb.Error(code=e.code, message=e.message)
                if (
                    self._transport_errors
                    or _header(metadata, "x-centrifugo-error-mode") == "transport"
                ):
                    status = GRPC_CODES.get(e.code, grpc.StatusCode.INTERNAL)
                    await context.abort(
                        status,
                        e.message,
                        trailing_metadata=(
                            ("grpc-status-details-bin", status_details(status, err)),
                        ),
                    )
                if method == "batch":  # no error field: only transport errors are possible
                    await context.abort(grpc.StatusCode.INTERNAL, e.message)
                resp.error.CopyFrom(err)
                return resp
            if method == "batch":
                fill(resp, result)
            else:
                resp.result.SetInParent()
                fill(resp.result, result)
            return resp

        return call

    def _authorized(self, metadata: Any) -> bool:
        value = _header(metadata, "authorization")
        if value is None:
            return False
        given = value.encode() if isinstance(value, str) else value
        assert self._auth is not None
        return hmac.compare_digest(given, self._auth)


def _header(metadata: Any, key: str) -> Any:
    for k, v in metadata:
        if k == key:
            return v
    return None


async def start_api_server(node: Node, cfg: Config) -> grpc.aio.Server:
    gcfg = cfg.grpc_api
    server = grpc.aio.server(options=server_options(gcfg.max_receive_message_size))
    server.add_generic_rpc_handlers((ApiService(node, cfg).handler(),))
    if gcfg.reflection:
        add_reflection(server, (pb.DESCRIPTOR,))
    target = bind_target(gcfg.address, gcfg.port)
    add_port(server, target, gcfg.tls, "grpc_api")
    await server.start()
    log.info("serving gRPC API on %s", target)
    return server


def add_grpc_api(app: web.Application, cfg: Config) -> None:
    """Run the gRPC API server alongside the app when `grpc_api.enabled`."""
    if not cfg.grpc_api.enabled:
        return

    async def grpc_api_ctx(app: web.Application) -> AsyncIterator[None]:
        server = await start_api_server(app[NODE_KEY], cfg)
        yield
        await server.stop(STOP_GRACE)

    app.cleanup_ctx.append(grpc_api_ctx)
