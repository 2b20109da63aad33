"""Map publish and map remove proxy requests and results (Centrifugo 6.8+,
`internal/proxy/map_publish*.go`, `map_remove*.go`), beside the other kinds in models.py.

A client's map publish or remove in a namespace with `map.publish_proxy_enabled` /
`map.remove_proxy_enabled` asks the backend first, instead of the namespace's permission
checks and `map.client_key` (the config refuses client_key together with either proxy).

Requests (MapPublishRequest, MapRemoveRequest): the connection fields, `user`, `channel`,
`key` (the client's, possibly empty: the backend may assign one), publish's `data` or
`b64data`, and `meta` with `include_connection_meta`. Unlike the other kinds, every field is
`omitempty` in Centrifugo's JSON, `user` included: an anonymous client's request has none.

Results: a `disconnect` or an `error` reply raises (app/proxy/models.py's rule); otherwise
what Centrifugo's handlers take from `result` (absent: everything as the client sent it):

- publish: `key` ("" = the client's), `data` (present wins over `b64data`; neither = the
  client's), `tags`, `key_mode`, `idempotency_key`, `delta`, `version`, `version_epoch`.
  `score`, `stream_data` and `b64stream_data` are read by no OSS Centrifugo code: ignored.
  The namespace's `delta_publish` does not apply (the handler publishes with the result's
  `delta` only).
- remove: `key` ("" = the client's), `tags`, `idempotency_key`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.maps.broker import KeyMode

from .models import (
    UINT64,
    ProxyContext,
    _base,
    _put_data,
    _raise_for_reply,
    _Reader,
)

__all__ = [
    "MapPublishProxyResult",
    "MapRemoveProxyResult",
    "map_publish_request",
    "map_remove_request",
    "parse_map_publish",
    "parse_map_remove",
]

# MapPublishResult.key_mode: centrifuge.KeyMode(s) as is; its brokers act on "if_new" and
# "if_exists" only, so any other string writes always (the server API refuses unknown
# modes with 107, the proxy handler does not check them).
_KEY_MODES = {"if_new": KeyMode.IF_NEW, "if_exists": KeyMode.IF_EXISTS}


@dataclass(slots=True)
class MapPublishProxyResult:
    key: str = ""  # "" = publish under the client's key
    data: bytes | None = None  # None = publish the client's data
    tags: dict[str, str] | None = None
    key_mode: KeyMode = KeyMode.REPLACE
    idempotency_key: str = ""
    delta: bool = False
    version: int = 0
    version_epoch: str = ""


@dataclass(slots=True)
class MapRemoveProxyResult:
    key: str = ""  # "" = remove the client's key
    tags: dict[str, str] | None = None
    idempotency_key: str = ""


def _map_base(
    ctx: ProxyContext, channel: str, key: str, *, binary: bool, include_meta: bool
) -> dict[str, Any]:
    out = _base(ctx, binary)
    # omitempty on user too (proxy.pb.go: generate_tags.sh keeps `user` only for the
    # classic kinds).
    if ctx.user:
        out["user"] = ctx.user
    if channel:
        out["channel"] = channel
    if key:
        out["key"] = key
    if include_meta and ctx.meta:
        out["meta"] = ctx.meta
    return out


def map_publish_request(
    ctx: ProxyContext,
    channel: str,
    key: str,
    data: bytes | None,
    *,
    binary: bool,
    include_meta: bool,
) -> dict[str, Any]:
    out = _map_base(ctx, channel, key, binary=binary, include_meta=include_meta)
    _put_data(out, data, binary, ctx)
    return out


def map_remove_request(
    ctx: ProxyContext, channel: str, key: str, *, binary: bool, include_meta: bool
) -> dict[str, Any]:
    return _map_base(ctx, channel, key, binary=binary, include_meta=include_meta)


def parse_map_publish(obj: Any, *, from_json: bool) -> MapPublishProxyResult:
    resp = _Reader(obj, from_json, "map_publish")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return MapPublishProxyResult()
    data = r.raw("data")
    if data is None:
        data = r.b64("b64data")  # bad base64: the handler answers 100, as ProxyUnavailable
    return MapPublishProxyResult(
        key=r.get_str("key"),
        data=data,
        tags=r.str_map("tags") or None,
        key_mode=_KEY_MODES.get(r.get_str("key_mode"), KeyMode.REPLACE),
        idempotency_key=r.get_str("idempotency_key"),
        delta=r.get_bool("delta"),
        version=r.get_int("version", UINT64),
        version_epoch=r.get_str("version_epoch"),
    )


def parse_map_remove(obj: Any, *, from_json: bool) -> MapRemoveProxyResult:
    resp = _Reader(obj, from_json, "map_remove")
    _raise_for_reply(resp)
    r = resp.obj_or_none("result")
    if r is None:
        return MapRemoveProxyResult()
    return MapRemoveProxyResult(
        key=r.get_str("key"),
        tags=r.str_map("tags") or None,
        idempotency_key=r.get_str("idempotency_key"),
    )
