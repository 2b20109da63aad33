"""Proxy requests and results, independent of the HTTP or gRPC transport.

A request is built as a plain dict keyed by the wire field names (Centrifugo's
`proxyproto` JSON names == protobuf field names). Raw-JSON payload fields (`data`,
`meta`) hold bytes: the HTTP transport splices them into the JSON body unchanged and the
gRPC transport puts them into `bytes` fields. Empty fields are left out, as Go's
`omitempty` does, except `user`, which Centrifugo always sends for every kind but connect.

A response is a dict in the same shape, either decoded from JSON (raw fields are then
JSON values) or converted from a protobuf message (raw fields are then bytes); the
`parse_*` functions turn it into typed results and apply Centrifugo's rules: a
`disconnect` wins over an `error`, both win over `result`; `b64*` fields win over their
raw twins (except for publish, where a present `data` wins).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app import jsonraw
from app.auth import OVERRIDE_FIELDS, SubscribeOptionsClaim, SubscribeOverride
from app.errors import ClientError, Disconnect
from app.proxy.gen import proxy_pb2 as pb

__all__ = [
    "ProxyUnavailable",
    "ProxyContext",
    "ConnectProxyResult",
    "RefreshProxyResult",
    "SubscribeProxyResult",
    "PublishProxyResult",
    "RPCProxyResult",
    "SubRefreshProxyResult",
    "RAW_FIELDS",
    "connect_request",
    "refresh_request",
    "subscribe_request",
    "publish_request",
    "rpc_request",
    "sub_refresh_request",
    "parse_connect",
    "parse_refresh",
    "parse_subscribe",
    "parse_publish",
    "parse_rpc",
    "parse_sub_refresh",
    "SharedPollItem",
    "SharedPollRefreshResult",
    "shared_poll_refresh_request",
    "parse_shared_poll_refresh",
    "decode_json_response",
]

# Request fields that carry raw JSON (spliced into HTTP bodies as is).
RAW_FIELDS = frozenset({"data", "meta"})


class ProxyUnavailable(Exception):
    """The backend could not be asked or gave no usable answer.

    Transport failure, connection refused, timeout, non-200 status without a matching
    `status_to_code_transforms` entry, invalid JSON, a malformed response or undecodable
    base64. Callers map it to error 100 (bidirectional), disconnect 3004 (unidirectional
    connect) or a later retry (refresh, sub_refresh).
    """


@dataclass(slots=True)
class ProxyContext:
    """What a proxy call needs to know about the connection making it.

    `headers` are the HTTP headers of the transport request (None when the connection did
    not come over HTTP, e.g. uni_grpc); `grpc_metadata` is the incoming metadata of a gRPC
    transport and is only consulted when `headers` is None. `emulated_headers` come from
    the connect command's `headers` field and are kept for the connection's life. Any
    Mapping works; multi-dicts (aiohttp's CIMultiDictProxy) keep all values of a header.
    `meta` is the connection meta (raw JSON) from the token or the connect proxy; it is
    sent only by proxies with `include_connection_meta`.
    """

    client: str
    transport: str
    protocol: str = "json"
    user: str = ""
    meta: bytes | None = None
    headers: Mapping[str, str] | None = None
    emulated_headers: Mapping[str, str] | None = None
    grpc_metadata: Mapping[str, str] | None = None


@dataclass(slots=True)
class ConnectProxyResult:
    user: str = ""
    expire_at: int = 0  # unix seconds, 0 = never expires
    info: bytes | None = None
    data: bytes | None = None  # goes to ConnectResult.data
    channels: list[str] = field(default_factory=list)
    subs: dict[str, SubscribeOptionsClaim] = field(default_factory=dict)
    meta: bytes | None = None


@dataclass(slots=True)
class RefreshProxyResult:
    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None
    meta: bytes | None = None


@dataclass(slots=True)
class SubscribeProxyResult:
    expire_at: int = 0
    info: bytes | None = None
    data: bytes | None = None
    override: SubscribeOverride | None = None


@dataclass(slots=True)
class PublishProxyResult:
    data: bytes | None = None  # replacement payload; None = publish the client's data
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""


@dataclass(slots=True)
class RPCProxyResult:
    data: bytes | None = None


@dataclass(slots=True)
class SubRefreshProxyResult:
    expired: bool = False
    expire_at: int = 0
    info: bytes | None = None


@dataclass(slots=True)
class SharedPollItem:
    """One item of a shared poll refresh reply (SharedPollRefreshResultItem)."""

    key: str
    data: bytes = b""
    version: int = 0
    removed: bool = False
    prev_data: bytes = b""


@dataclass(slots=True)
class SharedPollRefreshResult:
    items: list[SharedPollItem]
    epoch: str = ""


# ------------------------------------------------------------------------------ requests


def _base(ctx: ProxyContext, binary: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ctx.client:
        out["client"] = ctx.client
    if ctx.transport:
        out["transport"] = ctx.transport
    if ctx.protocol:
        out["protocol"] = ctx.protocol
    out["encoding"] = "binary" if binary else "json"
    return out


def _put_data(out: dict[str, Any], data: bytes | None, binary: bool, ctx: ProxyContext) -> None:
    if binary:
        if data:
            out["b64data"] = base64.b64encode(data).decode("ascii")
        return
    if not data:
        return
    if ctx.protocol != "json":
        # JSON-protocol payloads were validated by the codec; protobuf clients may send
        # anything, and Centrifugo fails the call when it cannot embed the bytes as JSON.
        if not jsonraw.is_json(data):
            raise ProxyUnavailable(
                "payload is not valid JSON (enable binary_encoding for binary payloads)"
            )
    out["data"] = data


def _put_user_meta(out: dict[str, Any], ctx: ProxyContext, include_meta: bool) -> None:
    out["user"] = ctx.user
    if include_meta and ctx.meta:
        out["meta"] = ctx.meta


def connect_request(
    ctx: ProxyContext,
    *,
    binary: bool,
    data: bytes | None = None,
    name: str = "",
    version: str = "",
    channels: Sequence[str] = (),
) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_data(out, data, binary, ctx)
    if name:
        out["name"] = name
    if version:
        out["version"] = version
    if channels:
        out["channels"] = list(channels)
    return out


def refresh_request(ctx: ProxyContext, *, binary: bool, include_meta: bool) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_user_meta(out, ctx, include_meta)
    return out


def subscribe_request(
    ctx: ProxyContext,
    channel: str,
    *,
    binary: bool,
    include_meta: bool,
    token: str = "",
    data: bytes | None = None,
) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_user_meta(out, ctx, include_meta)
    if channel:
        out["channel"] = channel
    if token:
        out["token"] = token
    _put_data(out, data, binary, ctx)
    return out


def publish_request(
    ctx: ProxyContext, channel: str, data: bytes | None, *, binary: bool, include_meta: bool
) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_user_meta(out, ctx, include_meta)
    if channel:
        out["channel"] = channel
    _put_data(out, data, binary, ctx)
    return out


def rpc_request(
    ctx: ProxyContext, method: str, data: bytes | None, *, binary: bool, include_meta: bool
) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_user_meta(out, ctx, include_meta)
    if method:
        out["method"] = method
    _put_data(out, data, binary, ctx)
    return out


def sub_refresh_request(
    ctx: ProxyContext, channel: str, *, binary: bool, include_meta: bool
) -> dict[str, Any]:
    out = _base(ctx, binary)
    _put_user_meta(out, ctx, include_meta)
    if channel:
        out["channel"] = channel
    return out


def shared_poll_refresh_request(channel: str, items: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """SharedPollRefreshRequest: the channel and its (key, version) items; a zero version
    is left out, as Go's omitempty leaves it (no client fields: one call serves them all)."""
    out: dict[str, Any] = {"channel": channel}
    if items:
        out["items"] = [{"key": k, "version": v} if v else {"key": k} for k, v in items]
    return out


# ----------------------------------------------------------------------------- responses


# The response message of each proxy kind: its payload fields are kept as the bytes the
# backend sent (app/jsonraw.py), as Centrifugo keeps them (json.RawMessage).
_RESPONSES = {
    "connect": jsonraw.decoder(pb.ConnectResponse.DESCRIPTOR),
    "refresh": jsonraw.decoder(pb.RefreshResponse.DESCRIPTOR),
    "subscribe": jsonraw.decoder(pb.SubscribeResponse.DESCRIPTOR),
    "publish": jsonraw.decoder(pb.PublishResponse.DESCRIPTOR),
    "rpc": jsonraw.decoder(pb.RPCResponse.DESCRIPTOR),
    "sub_refresh": jsonraw.decoder(pb.SubRefreshResponse.DESCRIPTOR),
    "map_publish": jsonraw.decoder(pb.MapPublishResponse.DESCRIPTOR),
    "map_remove": jsonraw.decoder(pb.MapRemoveResponse.DESCRIPTOR),
    "shared_poll_refresh": jsonraw.decoder(pb.SharedPollRefreshResponse.DESCRIPTOR),
}


def decode_json_response(kind: str, body: bytes) -> dict[str, Any]:
    """Parse the HTTP proxy response body of `kind` (connect, refresh, subscribe, publish,
    rpc, sub_refresh, map_publish, map_remove, shared_poll_refresh); anything but a JSON
    object of that shape is unusable."""
    try:
        value: dict[str, Any] = jsonraw.decode(_RESPONSES[kind], body)
    except jsonraw.JsonError as e:
        raise ProxyUnavailable(f"invalid JSON in proxy response: {e}") from None
    return value


def _dump(value: Any) -> bytes:
    """A raw field of a reply the server made itself (status code transforms)."""
    return orjson.dumps(value)


# (min, max, name) of the proto integer types of reply fields.
INT64 = (-(2**63), 2**63 - 1, "int64")
UINT32 = (0, 2**32 - 1, "uint32")
UINT64 = (0, 2**64 - 1, "uint64")


class _Reader:
    """Typed field access over one response object.

    Mirrors Go's decoding: a JSON null or an absent field leaves the zero value; a value
    of the wrong type fails the whole response.
    """

    __slots__ = ("obj", "from_json", "where")

    def __init__(self, obj: Any, from_json: bool, where: str) -> None:
        if not isinstance(obj, dict):
            raise ProxyUnavailable(f"{where}: expected an object")
        self.obj = obj
        self.from_json = from_json
        self.where = where

    def _bad(self, key: str, what: str) -> ProxyUnavailable:
        return ProxyUnavailable(f"{self.where}.{key}: expected {what}")

    def get_str(self, key: str) -> str:
        v = self.obj.get(key)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def get_int(self, key: str, bounds: tuple[int, int, str] = INT64) -> int:
        """An integer within the proto field's type (`bounds`): Go's Unmarshal refuses a
        number past it (2^64 into an int64, -1 into a uint32) and so the reply."""
        v = self.obj.get(key)
        if v is None:
            return 0
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer")
        lo, hi, name = bounds
        if not lo <= v <= hi:
            raise self._bad(key, f"an {name}")
        return v

    def get_bool(self, key: str) -> bool:
        v = self.obj.get(key)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise self._bad(key, "a boolean")
        return v

    def obj_or_none(self, key: str) -> _Reader | None:
        v = self.obj.get(key)
        if v is None:
            return None
        return _Reader(v, self.from_json, f"{self.where}.{key}")

    def str_list(self, key: str) -> list[str]:
        v = self.obj.get(key)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings")
        return list(v)

    def str_map(self, key: str) -> dict[str, str] | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise self._bad(key, "an object of strings")
        return dict(v)

    def raw(self, key: str) -> bytes | None:
        """A raw-JSON field: the JSON text as sent (Go keeps even a literal null)."""
        if key not in self.obj:
            return None
        v = self.obj[key]
        if self.from_json:
            return bytes(v) if type(v) is jsonraw.Raw else _dump(v)
        if not isinstance(v, bytes):
            raise self._bad(key, "bytes")
        return v or None

    def b64(self, key: str) -> bytes | None:
        s = self.get_str(key)
        if not s:
            return None
        try:
            return base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            raise ProxyUnavailable(f"{self.where}.{key}: invalid base64") from None

    def b64_or_raw(self, b64_key: str, raw_key: str) -> bytes | None:
        decoded = self.b64(b64_key)
        if decoded is not None:
            return decoded
        return self.raw(raw_key)


def _raise_for_reply(resp: _Reader) -> None:
    # Both are read before either is acted on: Go decodes the whole reply first, so an
    # `error` of the wrong shape fails the reply even beside a `disconnect`.
    disconnect = resp.obj_or_none("disconnect")
    error = resp.obj_or_none("error")
    client_error = (
        None
        if error is None
        else ClientError(
            error.get_int("code", UINT32), error.get_str("message"), error.get_bool("temporary")
        )
    )
    if disconnect is not None:
        raise Disconnect(disconnect.get_int("code", UINT32), disconnect.get_str("reason"))
    if client_error is not None:
        raise client_error


def _override(r: _Reader) -> SubscribeOverride | None:
    o = r.obj_or_none("override")
    if o is None:
        return None
    values: dict[str, bool | None] = {}
    for name in OVERRIDE_FIELDS:
        v = o.obj_or_none(name)
        values[name] = None if v is None else v.get_bool("value")
    return SubscribeOverride(**values)


def parse_connect(obj: Any, *, from_json: bool) -> ConnectProxyResult | None:
    """Raises Disconnect / ClientError from the reply; None when there is no `result`
    (the connection gets no credentials, as if no proxy answered)."""
    resp = _Reader(obj, from_json, "connect")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return None
    subs: dict[str, SubscribeOptionsClaim] = {}
    raw_subs = r.obj.get("subs")
    if raw_subs is not None:
        if not isinstance(raw_subs, dict):
            raise ProxyUnavailable("connect.result.subs: expected an object")
        for ch, opts in raw_subs.items():
            so = _Reader(opts if opts is not None else {}, from_json, f"connect.result.subs.{ch}")
            subs[ch] = SubscribeOptionsClaim(
                info=so.b64_or_raw("b64info", "info"),
                data=so.b64_or_raw("b64data", "data"),
                override=_override(so),
            )
    return ConnectProxyResult(
        user=r.get_str("user"),
        expire_at=r.get_int("expire_at"),
        info=r.b64_or_raw("b64info", "info"),
        data=r.b64_or_raw("b64data", "data"),
        channels=r.str_list("channels"),
        subs=subs,
        meta=r.raw("meta"),
    )


def parse_refresh(obj: Any, *, from_json: bool) -> RefreshProxyResult:
    """A reply without `result` (an error or disconnect included) expires the connection."""
    resp = _Reader(obj, from_json, "refresh")
    r = resp.obj_or_none("result")
    if r is None or r.get_bool("expired"):
        return RefreshProxyResult(expired=True)
    return RefreshProxyResult(
        expire_at=r.get_int("expire_at"),
        info=r.b64_or_raw("b64info", "info"),
        meta=r.raw("meta"),
    )


def parse_subscribe(obj: Any, *, from_json: bool) -> SubscribeProxyResult:
    resp = _Reader(obj, from_json, "subscribe")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return SubscribeProxyResult()
    return SubscribeProxyResult(
        expire_at=r.get_int("expire_at"),
        info=r.b64_or_raw("b64info", "info"),
        data=r.b64_or_raw("b64data", "data"),
        override=_override(r),
    )


def parse_publish(obj: Any, *, from_json: bool) -> PublishProxyResult:
    resp = _Reader(obj, from_json, "publish")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return PublishProxyResult()
    data = r.raw("data")
    if data is None:
        data = r.b64("b64data")
    return PublishProxyResult(
        data=data,
        skip_history=r.get_bool("skip_history"),
        tags=r.str_map("tags") or None,
        idempotency_key=r.get_str("idempotency_key"),
        delta=r.get_bool("delta"),
        version=r.get_int("version", UINT64),
        version_epoch=r.get_str("version_epoch"),
    )


def parse_rpc(obj: Any, *, from_json: bool) -> RPCProxyResult:
    resp = _Reader(obj, from_json, "rpc")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return RPCProxyResult()
    return RPCProxyResult(data=r.b64_or_raw("b64data", "data"))


def parse_sub_refresh(obj: Any, *, from_json: bool) -> SubRefreshProxyResult:
    """A reply without `result` (an error or disconnect included) ends the subscription."""
    resp = _Reader(obj, from_json, "sub_refresh")
    r = resp.obj_or_none("result")
    if r is None or r.get_bool("expired"):
        return SubRefreshProxyResult(expired=True)
    return SubRefreshProxyResult(
        expire_at=r.get_int("expire_at"),
        info=r.b64_or_raw("b64info", "info"),
    )


def parse_shared_poll_refresh(obj: Any, *, from_json: bool) -> SharedPollRefreshResult:
    """Centrifugo's SharedPollRefreshHandler: an `error` fails the call (ProxyUnavailable,
    with the backend's message), no `result` is an empty one."""
    resp = _Reader(obj, from_json, "shared_poll_refresh")
    error = resp.obj_or_none("error")
    if error is not None:
        raise ProxyUnavailable(f"backend error: {error.get_str('message')}")
    r = resp.obj_or_none("result")
    if r is None:
        return SharedPollRefreshResult(items=[])
    raw_items = r.obj.get("items")
    if raw_items is not None and not isinstance(raw_items, list):
        raise ProxyUnavailable("shared_poll_refresh.result.items: expected a list")
    items = []
    for i, raw in enumerate(raw_items or ()):
        it = _Reader(raw if raw is not None else {}, from_json, f"shared_poll_refresh.items[{i}]")
        items.append(
            SharedPollItem(
                key=it.get_str("key"),
                data=it.raw("data") or b"",
                version=it.get_int("version", UINT64),
                removed=it.get_bool("removed"),
                prev_data=it.raw("prev_data") or b"",
            )
        )
    return SharedPollRefreshResult(items=items, epoch=r.get_str("epoch"))
