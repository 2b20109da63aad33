"""A real application backend for proxy tests: an aiohttp app and a grpcio server.

Both serve every proxy kind of KINDS (connect, refresh, subscribe, publish, rpc, sub_refresh,
map_publish, map_remove) on free 127.0.0.1 ports, share one behaviour table and record every
request with the headers or metadata it carried. Per kind a test sets what the backend does:

    backend.reply("connect", {"result": {"user": "42", "info": {"a": 1}}})
    backend.status("rpc", 503)            # HTTP status; gRPC aborts (UNAVAILABLE by default)
    backend.raw("rpc", b"not json")       # HTTP 200 with this body (gRPC: INTERNAL abort)
    backend.hang("refresh")               # never answers until the backend stops
    backend.handler("publish", fn)        # fn(Request) -> reply object

Reply objects are written in the JSON shape of Centrifugo's proxy protocol. For gRPC they
are converted to the protobuf reply; the raw-JSON fields (data, info, meta) become the JSON
bytes of the given value, or stay as given when already bytes.

HTTP endpoints: `backend.http_url(kind)` -> `http://127.0.0.1:PORT/<kind>`;
gRPC: `backend.grpc_url` -> `grpc://127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import orjson
from aiohttp import web
from grpc_gen import proxy_pb2_grpc as pb_grpc

from app.proxy.gen import proxy_pb2 as pb
from tests.support.tls_certs import self_signed_pem

KINDS = (
    "connect",
    "refresh",
    "subscribe",
    "publish",
    "rpc",
    "sub_refresh",
    "map_publish",
    "map_remove",
)

_REPLY_CLASSES = {
    "connect": pb.ConnectResponse,
    "refresh": pb.RefreshResponse,
    "subscribe": pb.SubscribeResponse,
    "publish": pb.PublishResponse,
    "rpc": pb.RPCResponse,
    "sub_refresh": pb.SubRefreshResponse,
    "map_publish": pb.MapPublishResponse,
    "map_remove": pb.MapRemoveResponse,
}


@dataclass
class Request:
    """One request the backend received."""

    kind: str
    via: str  # "http" or "grpc"
    body: dict[str, Any]  # HTTP: the parsed JSON; gRPC: set fields, bytes kept as bytes
    raw: bytes  # HTTP body or serialized protobuf request
    headers: dict[str, list[str]]  # lower-case header / metadata name -> values
    path: str = ""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def raw_field(self, name: str) -> bytes | None:
        """A raw-JSON request field (data, meta) as bytes, whatever the transport."""
        if name not in self.body:
            return None
        v = self.body[name]
        if self.via == "grpc":
            return v
        return orjson.dumps(v)


@dataclass
class _Behaviour:
    mode: str = "reply"  # reply | status | raw | hang | handler
    reply: Any = field(default_factory=lambda: {"result": {}})
    status: int = 200
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    body: bytes = b""
    fn: Callable[[Request], Any] | None = None
    headers: dict[str, str] | None = None  # extra HTTP response headers


def message_to_dict(msg: Any) -> dict[str, Any]:
    """Set fields of a protobuf message; bytes stay bytes (independent of app code)."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {
                k: (message_to_dict(v) if vfd.message_type is not None else v)
                for k, v in value.items()
            }
        elif fd.message_type is not None:
            if fd.is_repeated:
                out[fd.name] = [message_to_dict(v) for v in value]
            else:
                out[fd.name] = message_to_dict(value)
        elif fd.is_repeated:
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def dict_to_message(cls: Any, obj: dict[str, Any]) -> Any:
    """Build a protobuf message from a reply in JSON shape (see module docstring)."""
    msg = cls()
    _fill(msg, obj)
    return msg


def _fill(msg: Any, obj: dict[str, Any]) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in obj.items():
        if value is None or key not in fields:
            continue
        fd = fields[key]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            target = getattr(msg, key)
            for k, v in value.items():
                if vfd.message_type is not None:
                    _fill(target[k], v or {})
                else:
                    target[k] = v
        elif fd.message_type is not None:
            if fd.is_repeated:
                for item in value:
                    _fill(getattr(msg, key).add(), item)
            else:
                sub = getattr(msg, key)
                sub.SetInParent()
                _fill(sub, value)
        elif fd.type == fd.TYPE_BYTES:
            setattr(msg, key, value if isinstance(value, bytes) else orjson.dumps(value))
        elif fd.is_repeated:
            getattr(msg, key).extend(value)
        else:
            setattr(msg, key, value)


class ProxyBackend:
    """Both servers plus the shared behaviour table and request log."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._behaviour: dict[str, _Behaviour] = {k: _Behaviour() for k in KINDS}
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self.http_port = 0
        self.grpc_port = 0

    # ------------------------------------------------------------------ behaviour

    def reply(self, kind: str, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._behaviour[kind] = _Behaviour(mode="reply", reply=obj, headers=headers)

    def status(
        self, kind: str, status: int, grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        self._behaviour[kind] = _Behaviour(mode="status", status=status, grpc_code=grpc_code)

    def raw(self, kind: str, body: bytes) -> None:
        self._behaviour[kind] = _Behaviour(mode="raw", body=body)

    def hang(self, kind: str) -> None:
        self._behaviour[kind] = _Behaviour(mode="hang")

    def handler(self, kind: str, fn: Callable[[Request], Any]) -> None:
        self._behaviour[kind] = _Behaviour(mode="handler", fn=fn)

    def of_kind(self, kind: str) -> list[Request]:
        return [r for r in self.requests if r.kind == kind]

    def last(self, kind: str) -> Request:
        reqs = self.of_kind(kind)
        assert reqs, f"backend received no {kind} request"
        return reqs[-1]

    # ------------------------------------------------------------------ addresses

    def http_url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{kind}"

    def https_url(self, kind: str) -> str:
        return f"https://127.0.0.1:{self.http_port}/{kind}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def endpoint(self, via: str, kind: str) -> str:
        return self.http_url(kind) if via == "http" else self.grpc_url

    # ------------------------------------------------------------------ lifecycle

    async def start(self, tls: tuple[bytes, bytes] | None = None) -> None:
        """Start both servers; with `tls` = (cert PEM, key PEM) they serve HTTPS / gRPC+TLS
        (then use `https_url` and the same `grpc_url`)."""
        ssl_ctx = None
        if tls is not None:
            ssl_ctx = _server_ssl_context(*tls)
        app = web.Application()
        app.router.add_post("/{kind}", self._http_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._grpc = grpc.aio.server()
        pb_grpc.add_CentrifugoProxyServicer_to_server(_Servicer(self), self._grpc)
        if tls is not None:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.grpc_port = self._grpc.add_secure_port("127.0.0.1:0", creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ HTTP

    async def _http_handler(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        raw = await request.read()
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {"__invalid__": raw.decode(errors="replace")}
        req = Request(kind, "http", body, raw, headers, path=request.path)
        self.requests.append(req)
        # Paths other than KINDS (named proxies) answer like a default kind.
        b = self._behaviour.get(kind) or _Behaviour()
        if b.mode == "hang":
            await self._stopping.wait()
            return web.Response(status=503)
        if b.mode == "status":
            return web.Response(status=b.status, body=b'{"result":{}}')
        if b.mode == "raw":
            return web.Response(body=b.body, content_type="application/json")
        reply = b.fn(req) if b.mode == "handler" and b.fn is not None else b.reply
        return web.Response(
            body=orjson.dumps(reply), content_type="application/json", headers=b.headers
        )

    # ------------------------------------------------------------------ gRPC

    async def grpc_call(self, kind: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers: dict[str, list[str]] = {}
        for k, v in context.invocation_metadata() or ():
            headers.setdefault(k.lower(), []).append(v if isinstance(v, str) else v.decode())
        req = Request(kind, "grpc", message_to_dict(request), request.SerializeToString(), headers)
        self.requests.append(req)
        b = self._behaviour[kind]
        if b.mode == "hang":
            await self._stopping.wait()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "backend stopping")
        if b.mode == "status":
            await context.abort(b.grpc_code, f"status {b.status}")
        if b.mode == "raw":
            await context.abort(grpc.StatusCode.INTERNAL, "raw body has no gRPC form")
        reply = b.fn(req) if b.mode == "handler" and b.fn is not None else b.reply
        return dict_to_message(_REPLY_CLASSES[kind], reply)


def _server_ssl_context(cert: bytes, key: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as d:
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert)
        with open(key_path, "wb") as f:
            f.write(key)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def self_signed_cert(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A throwaway (cert PEM, key PEM) pair valid for `host` (IP SAN) and localhost."""
    return self_signed_pem((host, "localhost"), "proxy-backend-test")


class _Servicer(pb_grpc.CentrifugoProxyServicer):
    def __init__(self, backend: ProxyBackend) -> None:
        self.b = backend

    async def Connect(self, request, context):  # noqa: N802
        return await self.b.grpc_call("connect", request, context)

    async def Refresh(self, request, context):  # noqa: N802
        return await self.b.grpc_call("refresh", request, context)

    async def Subscribe(self, request, context):  # noqa: N802
        return await self.b.grpc_call("subscribe", request, context)

    async def Publish(self, request, context):  # noqa: N802
        return await self.b.grpc_call("publish", request, context)

    async def RPC(self, request, context):  # noqa: N802
        return await self.b.grpc_call("rpc", request, context)

    async def SubRefresh(self, request, context):  # noqa: N802
        return await self.b.grpc_call("sub_refresh", request, context)

    async def MapPublish(self, request, context):  # noqa: N802
        return await self.b.grpc_call("map_publish", request, context)

    async def MapRemove(self, request, context):  # noqa: N802
        return await self.b.grpc_call("map_remove", request, context)
