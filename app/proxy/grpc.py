"""gRPC proxy transport: unary calls to the `CentrifugoProxy` service (grpcio asyncio API).

The channel is created on first use inside the running event loop (grpc.aio channels
belong to the loop that made them) and reused by every call of this proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio
from google.protobuf.message import Message

from app.config import ProxyConfig
from app.tls import load_pem

from .gen import proxy_pb2 as pb
from .models import ProxyContext, ProxyUnavailable

__all__ = ["GRPCCaller", "grpc_request_metadata", "message_to_dict", "grpc_target"]

log = logging.getLogger("centrifugo.proxy")

_SERVICE = pb.DESCRIPTOR.services_by_name["CentrifugoProxy"].full_name

# kind -> (service method, request message, response message)
_METHODS: dict[str, tuple[str, type[Message], type[Message]]] = {
    "connect": ("Connect", pb.ConnectRequest, pb.ConnectResponse),
    "refresh": ("Refresh", pb.RefreshRequest, pb.RefreshResponse),
    "subscribe": ("Subscribe", pb.SubscribeRequest, pb.SubscribeResponse),
    "publish": ("Publish", pb.PublishRequest, pb.PublishResponse),
    "rpc": ("RPC", pb.RPCRequest, pb.RPCResponse),
    "sub_refresh": ("SubRefresh", pb.SubRefreshRequest, pb.SubRefreshResponse),
    "map_publish": ("MapPublish", pb.MapPublishRequest, pb.MapPublishResponse),
    "map_remove": ("MapRemove", pb.MapRemoveRequest, pb.MapRemoveResponse),
    "shared_poll_refresh": (
        "SharedPollRefresh",
        pb.SharedPollRefreshRequest,
        pb.SharedPollRefreshResponse,
    ),
}


def grpc_target(endpoint: str) -> str:
    """`grpc://host:port` -> `host:port`; anything else is used as the target as is."""
    if endpoint.startswith("grpc://"):
        return urlsplit(endpoint).netloc
    return endpoint


def grpc_request_metadata(cfg: ProxyConfig, ctx: ProxyContext) -> list[tuple[str, str | bytes]]:
    """Outgoing metadata, lowest precedence first: static, emulated, transport; keys are
    lower-case (gRPC requires it). The per-call credentials pair is added by the caller."""
    md: dict[str, list[str]] = {}
    for k, v in cfg.grpc.static_metadata.items():
        md[k.lower()] = [str(v)]
    allowed_emulated = {h.lower() for h in cfg.emulated_headers}
    if ctx.emulated_headers and allowed_emulated:
        for k, v in ctx.emulated_headers.items():
            if k.lower() in allowed_emulated:
                md[k.lower()] = [v]
    if ctx.headers is not None:
        allowed = {h.lower() for h in cfg.http_headers}
        picked = [(k.lower(), v) for k, v in ctx.headers.items() if k.lower() in allowed]
    elif ctx.grpc_metadata is not None:
        allowed = set(cfg.grpc_metadata)
        picked = [(k.lower(), v) for k, v in ctx.grpc_metadata.items() if k in allowed]
    else:
        picked = []
    replaced: set[str] = set()
    for k, v in picked:
        if k not in replaced:
            md[k] = []
            replaced.add(k)
        md[k].append(v)
    # Binary metadata ("-bin" keys) travels as bytes.
    return [(k, v.encode() if k.endswith("-bin") else v) for k, vs in md.items() for v in vs]


def message_to_dict(msg: Any) -> dict[str, Any]:
    """A protobuf message as the dict shape the parsers read: only fields that are set
    (proto3 zero values count as unset, like Go's omitempty), bytes kept as bytes."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                if value_fd.message_type is not None:
                    out[fd.name] = {k: message_to_dict(v) for k, v in value.items()}
                else:
                    out[fd.name] = dict(value)
            elif _is_repeated(fd):
                out[fd.name] = [message_to_dict(v) for v in value]
            else:
                out[fd.name] = message_to_dict(value)
        elif _is_repeated(fd):
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def _is_repeated(fd: Any) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return fd.label == fd.LABEL_REPEATED


class GRPCCaller:
    """Calls one gRPC proxy endpoint; returns the reply as a dict (see message_to_dict)."""

    def __init__(self, name: str, cfg: ProxyConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.target = grpc_target(cfg.endpoint)
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}  # kind -> unary callable on the channel
        self._credentials: grpc.ChannelCredentials | None = None
        self._options: list[tuple[str, Any]] = []
        tls = cfg.grpc.tls
        if tls.enabled:
            where = f"proxy {name} grpc.tls"
            root = (
                load_pem(tls.server_ca_pem, f"{where}.server_ca_pem") if tls.server_ca_pem else None
            )
            key = cert = None
            if tls.cert_pem and tls.key_pem:
                cert = load_pem(tls.cert_pem, f"{where}.cert_pem")
                key = load_pem(tls.key_pem, f"{where}.key_pem")
            self._credentials = grpc.ssl_channel_credentials(root, key, cert)
            if tls.server_name:
                self._options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.compression = grpc.Compression.Gzip if cfg.grpc.compression else None
        self._call_md: list[tuple[str, str | bytes]] = []
        if cfg.grpc.credentials_key:
            self._call_md.append((cfg.grpc.credentials_key.lower(), cfg.grpc.credentials_value))

    def _method(self, kind: str) -> Any:
        """The unary call of `kind` on this proxy's channel (both made on first use)."""
        method = self._calls.get(kind)
        if method is None:
            if self._channel is None:
                compression = self.compression
                if self._credentials is not None:
                    self._channel = grpc.aio.secure_channel(
                        self.target, self._credentials, self._options, compression
                    )
                else:
                    self._channel = grpc.aio.insecure_channel(
                        self.target, self._options, compression
                    )
            name, request_cls, response_cls = _METHODS[kind]
            method = self._calls[kind] = self._channel.unary_unary(
                f"/{_SERVICE}/{name}",
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
        return method

    async def call(self, kind: str, fields: Mapping[str, Any], ctx: ProxyContext) -> dict:
        request = _METHODS[kind][1](**fields)
        metadata = grpc_request_metadata(self.cfg, ctx) + self._call_md
        method = self._method(kind)
        timeout = self.cfg.timeout if self.cfg.timeout > 0 else None
        try:
            reply = await method(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            log.error("error proxying %s to %s: %r", kind, self.name, e)
            raise ProxyUnavailable(f"gRPC call error: {e!r}") from e
        except Exception as e:  # bad metadata values, channel errors: never past the caller
            log.error("error proxying %s to %s: %r", kind, self.name, e)
            raise ProxyUnavailable(f"gRPC call error: {e!r}") from e
        return message_to_dict(reply)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._calls = {}
        if channel is not None:
            await channel.close()
