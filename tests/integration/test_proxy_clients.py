"""ProxyManager against a real backend (aiohttp app and grpcio server on loopback).

Every proxy kind over HTTP and gRPC: request fields, results, error and disconnect replies,
header/metadata forwarding and its precedence, static headers, binary encoding, connection
meta, status transforms, TLS, and each failure mode (timeout, refused, non-200, invalid JSON).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from multidict import CIMultiDict

from app.auth import SubscribeOverride
from app.config import Config, load_config
from app.errors import ClientError, Disconnect
from app.proxy import Proxy, ProxyContext, ProxyManager, ProxyUnavailable
from tests.support.ports import free_port

from .proxy_backend import ProxyBackend, self_signed_cert

VIAS = ("http", "grpc")
ALL_KINDS = ("connect", "refresh", "subscribe", "publish", "rpc", "sub_refresh")
# Kinds whose error/disconnect replies reach the client.
REPLY_KINDS = ("connect", "subscribe", "publish", "rpc")


@pytest.fixture
async def backend() -> AsyncIterator[ProxyBackend]:
    b = ProxyBackend()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


ManagerFactory = Callable[..., ProxyManager]


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[ManagerFactory]:
    managers: list[ProxyManager] = []

    def factory(cfg: dict[str, Any]) -> ProxyManager:
        path = tmp_path / f"config{len(managers)}.json"
        path.write_text(json.dumps(cfg))
        mgr = ProxyManager(load_config(str(path)))
        managers.append(mgr)
        return mgr

    yield factory
    for mgr in managers:
        await mgr.close()


def all_kinds_config(endpoint: Callable[[str], str], **opts: Any) -> dict[str, Any]:
    """Every proxy kind enabled for channels/rpc without namespace, each with `opts`."""

    def section(kind: str) -> dict[str, Any]:
        return {"endpoint": endpoint(kind), "timeout": "2s", **opts}

    return {
        "client": {
            "proxy": {
                "connect": {"enabled": True, **section("connect")},
                "refresh": {"enabled": True, **section("refresh")},
            }
        },
        "channel": {
            "proxy": {
                "subscribe": section("subscribe"),
                "publish": section("publish"),
                "sub_refresh": section("sub_refresh"),
            },
            "without_namespace": {
                "subscribe_proxy_enabled": True,
                "publish_proxy_enabled": True,
                "sub_refresh_proxy_enabled": True,
            },
        },
        "rpc": {"proxy": section("rpc"), "without_namespace": {"proxy_enabled": True}},
    }


@pytest.fixture
def proxies(
    backend: ProxyBackend, make_manager: ManagerFactory
) -> Callable[..., Callable[[str], Proxy]]:
    """proxies(via, **opts) -> get(kind) -> the Proxy serving that kind."""

    def build(via: str, **opts: Any) -> Callable[[str], Proxy]:
        mgr = make_manager(all_kinds_config(lambda k: backend.endpoint(via, k), **opts))
        return lambda kind: proxy_of(mgr, kind)

    return build


def proxy_of(mgr: ProxyManager, kind: str) -> Proxy:
    cfg = mgr.config
    p: Proxy | None
    if kind == "connect":
        p = mgr.connect_proxy()
    elif kind == "refresh":
        p = mgr.refresh_proxy()
    elif kind == "subscribe":
        p = mgr.subscribe_proxy(cfg.channel.without_namespace)
    elif kind == "publish":
        p = mgr.publish_proxy(cfg.channel.without_namespace)
    elif kind == "sub_refresh":
        p = mgr.sub_refresh_proxy(cfg.channel.without_namespace)
    else:
        p = mgr.rpc_proxy("method")
    assert p is not None
    return p


def ctx(**kw: Any) -> ProxyContext:
    base: dict[str, Any] = {
        "client": "c-1",
        "transport": "websocket",
        "protocol": "json",
        "user": "u-1",
    }
    base.update(kw)
    return ProxyContext(**base)


async def call(p: Proxy, kind: str, c: ProxyContext, data: bytes | None = b'{"in":1}') -> Any:
    """Invoke any kind with representative arguments."""
    if kind == "connect":
        return await p.connect(c, data=data, name="js", version="1.0", channels=["a", "b"])
    if kind == "refresh":
        return await p.refresh(c)
    if kind == "subscribe":
        return await p.subscribe(c, "chan", token="tok", data=data)
    if kind == "publish":
        return await p.publish(c, "chan", data)
    if kind == "rpc":
        return await p.rpc(c, "method", data)
    return await p.sub_refresh(c, "chan")


# ------------------------------------------------------------------------------- connect


@pytest.mark.parametrize("via", VIAS)
async def test_connect_request_and_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    backend.reply(
        "connect",
        {
            "result": {
                "user": "42",
                "expire_at": 1893456000,
                "info": {"name": "Alice"},
                "data": {"welcome": True},
                "channels": ["news", "chat:lobby"],
                "subs": {
                    "personal:42": {
                        "info": {"ch": 1},
                        "data": {"hello": "x"},
                        "override": {"presence": {"value": False}, "join_leave": {"value": True}},
                    },
                    "plain": {},
                },
                "meta": {"role": "admin", "n": [1, 2]},
            }
        },
    )
    res = await get("connect").connect(
        ctx(user=""), data=b'{"token":"abc"}', name="js", version="5.0", channels=["x", "y"]
    )
    assert res is not None
    assert res.user == "42"
    assert res.expire_at == 1893456000
    assert orjson.loads(res.info) == {"name": "Alice"}
    assert orjson.loads(res.data) == {"welcome": True}
    assert res.channels == ["news", "chat:lobby"]
    assert set(res.subs) == {"personal:42", "plain"}
    sub = res.subs["personal:42"]
    assert orjson.loads(sub.info) == {"ch": 1}
    assert orjson.loads(sub.data) == {"hello": "x"}
    assert sub.override == SubscribeOverride(presence=False, join_leave=True)
    assert res.subs["plain"].info is None and res.subs["plain"].override is None
    assert orjson.loads(res.meta) == {"role": "admin", "n": [1, 2]}

    req = backend.last("connect")
    assert req.via == via
    assert req.body["client"] == "c-1"
    assert req.body["transport"] == "websocket"
    assert req.body["protocol"] == "json"
    assert req.body["encoding"] == "json"
    assert req.body["name"] == "js"
    assert req.body["version"] == "5.0"
    assert req.body["channels"] == ["x", "y"]
    assert orjson.loads(req.raw_field("data")) == {"token": "abc"}
    assert "user" not in req.body and "b64data" not in req.body and "meta" not in req.body


@pytest.mark.parametrize("via", VIAS)
async def test_connect_data_is_spliced_raw_over_http(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    payload = b'{"b": 1,   "a": [1.50, "x"]}'  # odd spacing and number form survive as is
    await get("connect").connect(ctx(), data=payload)
    req = backend.last("connect")
    if via == "http":
        assert payload in req.raw
    else:
        assert req.body["data"] == payload


@pytest.mark.parametrize("via", VIAS)
async def test_connect_without_result_means_no_credentials(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply("connect", {})
    assert await get("connect").connect(ctx()) is None
    backend.reply("connect", {"result": {}})
    res = await get("connect").connect(ctx())
    assert res is not None and res.user == "" and res.info is None and res.meta is None


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", REPLY_KINDS)
async def test_error_reply_raises_client_error(
    via: str, kind: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply(kind, {"error": {"code": 1403, "message": "custom nope", "temporary": True}})
    with pytest.raises(ClientError) as ei:
        await call(get(kind), kind, ctx())
    assert (ei.value.code, ei.value.message, ei.value.temporary) == (1403, "custom nope", True)

    backend.reply(kind, {"error": {"code": 400, "message": "bad"}})
    with pytest.raises(ClientError) as ei:
        await call(get(kind), kind, ctx())
    assert (ei.value.code, ei.value.message, ei.value.temporary) == (400, "bad", False)


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", REPLY_KINDS)
async def test_disconnect_reply_raises_disconnect(
    via: str, kind: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    # A disconnect wins over an error in the same reply.
    backend.reply(
        kind,
        {
            "disconnect": {"code": 4501, "reason": "go away"},
            "error": {"code": 1000, "message": "x"},
        },
    )
    with pytest.raises(Disconnect) as ei:
        await call(get(kind), kind, ctx())
    assert (ei.value.code, ei.value.reason) == (4501, "go away")
    assert ei.value.reconnect is False

    backend.reply(kind, {"disconnect": {"code": 4000, "reason": "again"}})
    with pytest.raises(Disconnect) as ei:
        await call(get(kind), kind, ctx())
    assert (ei.value.code, ei.value.reason, ei.value.reconnect) == (4000, "again", True)


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ["refresh", "sub_refresh"])
@pytest.mark.parametrize(
    "reply",
    [
        {},
        {"error": {"code": 1000, "message": "x"}},
        {"disconnect": {"code": 4000, "reason": "y"}},
        {"result": {"expired": True, "expire_at": 1893456000}},
    ],
)
async def test_refresh_kinds_expire_without_result(
    via: str, kind: str, reply: dict, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply(kind, reply)
    res = await call(get(kind), kind, ctx())
    assert res.expired is True
    assert res.expire_at == 0 and res.info is None


# ------------------------------------------------------------------------------- refresh


@pytest.mark.parametrize("via", VIAS)
async def test_refresh_request_and_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via, include_connection_meta=True)
    backend.reply(
        "refresh",
        {"result": {"expire_at": 1893456000, "info": {"v": 2}, "meta": {"m": "new"}}},
    )
    res = await get("refresh").refresh(ctx(user="u-9", meta=b'{"m":"old"}'))
    assert res.expired is False
    assert res.expire_at == 1893456000
    assert orjson.loads(res.info) == {"v": 2}
    assert orjson.loads(res.meta) == {"m": "new"}
    req = backend.last("refresh")
    assert req.body["user"] == "u-9"
    assert req.body["client"] == "c-1"
    assert orjson.loads(req.raw_field("meta")) == {"m": "old"}
    assert "data" not in req.body


@pytest.mark.parametrize("via", VIAS)
async def test_refresh_sends_user_even_when_empty(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply("refresh", {"result": {"expire_at": 100}})
    res = await get("refresh").refresh(ctx(user=""))
    assert res.expire_at == 100 and res.info is None and res.meta is None
    req = backend.last("refresh")
    if via == "http":
        assert req.body["user"] == ""  # Centrifugo's JSON has no omitempty on `user`
    else:
        assert "user" not in req.body  # proto3 empty string is not on the wire


# ----------------------------------------------------------------------------- subscribe


@pytest.mark.parametrize("via", VIAS)
async def test_subscribe_request_and_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    backend.reply(
        "subscribe",
        {
            "result": {
                "expire_at": 1893456000,
                "info": {"color": "red"},
                "data": {"snapshot": [1, 2]},
                "override": {
                    "presence": {"value": True},
                    "join_leave": {"value": False},
                    "force_push_join_leave": {"value": True},
                    "force_recovery": {"value": True},
                    "force_positioning": {"value": False},
                },
            }
        },
    )
    res = await get("subscribe").subscribe(ctx(), "news", token="sub-token", data=b'{"q":1}')
    assert res.expire_at == 1893456000
    assert orjson.loads(res.info) == {"color": "red"}
    assert orjson.loads(res.data) == {"snapshot": [1, 2]}
    assert res.override == SubscribeOverride(
        presence=True,
        join_leave=False,
        force_push_join_leave=True,
        force_recovery=True,
        force_positioning=False,
    )
    req = backend.last("subscribe")
    assert req.body["channel"] == "news"
    assert req.body["token"] == "sub-token"
    assert req.body["user"] == "u-1"
    assert orjson.loads(req.raw_field("data")) == {"q": 1}


@pytest.mark.parametrize("via", VIAS)
async def test_subscribe_empty_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    for reply in ({}, {"result": {}}):
        backend.reply("subscribe", reply)
        res = await get("subscribe").subscribe(ctx(), "news")
        assert (res.expire_at, res.info, res.data, res.override) == (0, None, None, None)
    req = backend.last("subscribe")
    assert "token" not in req.body and "data" not in req.body


# ------------------------------------------------------------------------------- publish


@pytest.mark.parametrize("via", VIAS)
async def test_publish_request_and_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    backend.reply(
        "publish",
        {
            "result": {
                "data": {"replaced": True},
                "skip_history": True,
                "tags": {"k": "v"},
                "idempotency_key": "idem-1",
                "delta": True,
            }
        },
    )
    res = await get("publish").publish(ctx(), "chat", b'{"text":"hi"}')
    assert orjson.loads(res.data) == {"replaced": True}
    assert res.skip_history is True
    assert res.tags == {"k": "v"}
    assert res.idempotency_key == "idem-1"
    assert res.delta is True
    req = backend.last("publish")
    assert req.body["channel"] == "chat"
    assert req.body["user"] == "u-1"
    assert orjson.loads(req.raw_field("data")) == {"text": "hi"}


@pytest.mark.parametrize("via", VIAS)
async def test_publish_keeps_client_data_without_replacement(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    for reply in ({}, {"result": {}}, {"result": {"skip_history": False}}):
        backend.reply("publish", reply)
        res = await get("publish").publish(ctx(), "chat", b'{"text":"hi"}')
        assert res.data is None and res.tags is None and res.skip_history is False


@pytest.mark.parametrize("via", VIAS)
async def test_publish_b64data_replacement(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    backend.reply("publish", {"result": {"b64data": base64.b64encode(b"\x00\xffbin").decode()}})
    res = await get("publish").publish(ctx(), "chat", b'{"text":"hi"}')
    assert res.data == b"\x00\xffbin"


# ----------------------------------------------------------------------------------- rpc


@pytest.mark.parametrize("via", VIAS)
async def test_rpc_request_and_result(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via)
    backend.reply("rpc", {"result": {"data": {"answer": 42}}})
    res = await get("rpc").rpc(ctx(), "getAnswer", b'{"q":"life"}')
    assert orjson.loads(res.data) == {"answer": 42}
    req = backend.last("rpc")
    assert req.body["method"] == "getAnswer"
    assert req.body["user"] == "u-1"
    assert orjson.loads(req.raw_field("data")) == {"q": "life"}

    backend.reply("rpc", {"result": {}})
    assert (await get("rpc").rpc(ctx(), "m", None)).data is None
    assert "data" not in backend.last("rpc").body


# --------------------------------------------------------------------------- sub_refresh


@pytest.mark.parametrize("via", VIAS)
async def test_sub_refresh_request_and_result(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply("sub_refresh", {"result": {"expire_at": 1893456000, "info": {"i": 1}}})
    res = await get("sub_refresh").sub_refresh(ctx(), "news")
    assert res.expired is False
    assert res.expire_at == 1893456000
    assert orjson.loads(res.info) == {"i": 1}
    req = backend.last("sub_refresh")
    assert req.body["channel"] == "news"
    assert req.body["user"] == "u-1"


# ---------------------------------------------------------------------- binary encoding


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ["connect", "subscribe", "publish", "rpc"])
async def test_binary_encoding_request(
    via: str, kind: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, binary_encoding=True)
    payload = b"\x00\x01\xfe\xffnot json"
    await call(get(kind), kind, ctx(protocol="protobuf"), data=payload)
    req = backend.last(kind)
    assert req.body["encoding"] == "binary"
    assert req.body["protocol"] == "protobuf"
    assert base64.b64decode(req.body["b64data"]) == payload
    assert "data" not in req.body


@pytest.mark.parametrize("via", VIAS)
async def test_binary_encoding_results(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via, binary_encoding=True)

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    backend.reply(
        "connect",
        {
            "result": {
                "user": "1",
                "b64info": b64(b"\x01info"),
                "b64data": b64(b"\x02data"),
                # b64 wins over its raw twin
                "info": {"ignored": True},
                "subs": {"ch": {"b64info": b64(b"\x03"), "b64data": b64(b"\x04")}},
            }
        },
    )
    res = await get("connect").connect(ctx())
    assert res is not None
    assert (res.info, res.data) == (b"\x01info", b"\x02data")
    assert (res.subs["ch"].info, res.subs["ch"].data) == (b"\x03", b"\x04")

    backend.reply("subscribe", {"result": {"b64info": b64(b"\x05"), "b64data": b64(b"\x06")}})
    sres = await get("subscribe").subscribe(ctx(), "ch")
    assert (sres.info, sres.data) == (b"\x05", b"\x06")

    backend.reply("rpc", {"result": {"b64data": b64(b"\x07"), "data": {"ignored": 1}}})
    assert (await get("rpc").rpc(ctx(), "m", None)).data == b"\x07"

    backend.reply("refresh", {"result": {"expire_at": 5, "b64info": b64(b"\x08")}})
    assert (await get("refresh").refresh(ctx())).info == b"\x08"

    backend.reply("sub_refresh", {"result": {"expire_at": 5, "b64info": b64(b"\x09")}})
    assert (await get("sub_refresh").sub_refresh(ctx(), "ch")).info == b"\x09"


@pytest.mark.parametrize("via", VIAS)
async def test_non_json_payload_without_binary_encoding_fails_before_sending(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    with pytest.raises(ProxyUnavailable):
        await get("publish").publish(ctx(protocol="protobuf"), "chat", b"\x00\xff")
    assert backend.of_kind("publish") == []
    # Valid JSON from a protobuf client is fine.
    await get("publish").publish(ctx(protocol="protobuf"), "chat", b'{"ok":true}')
    assert orjson.loads(backend.last("publish").raw_field("data")) == {"ok": True}


@pytest.mark.parametrize("via", VIAS)
async def test_invalid_base64_in_result_is_unusable(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via)
    backend.reply("rpc", {"result": {"b64data": "!!!not base64"}})
    with pytest.raises(ProxyUnavailable):
        await get("rpc").rpc(ctx(), "m", None)


# ---------------------------------------------------------------------------------- meta


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ["refresh", "subscribe", "publish", "rpc", "sub_refresh"])
@pytest.mark.parametrize("include", [True, False])
async def test_connection_meta(
    via: str, kind: str, include: bool, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, include_connection_meta=include)
    meta = b'{"tenant":"t1","roles":["a"]}'
    await call(get(kind), kind, ctx(meta=meta))
    req = backend.last(kind)
    if include:
        assert req.raw_field("meta") is not None
        assert orjson.loads(req.raw_field("meta")) == {"tenant": "t1", "roles": ["a"]}
    else:
        assert "meta" not in req.body
    # No meta on the connection: nothing is sent even when included.
    await call(get(kind), kind, ctx(meta=None))
    assert "meta" not in backend.last(kind).body


@pytest.mark.parametrize("via", VIAS)
async def test_connect_never_sends_meta(via: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via, include_connection_meta=True)
    await get("connect").connect(ctx(meta=b'{"x":1}'))
    assert "meta" not in backend.last("connect").body


# ------------------------------------------------------------------------------ headers


def header_opts(via: str) -> dict[str, Any]:
    static_key = "http" if via == "http" else "grpc"
    static_field = "static_headers" if via == "http" else "static_metadata"
    return {
        "http_headers": ["X-Over", "Authorization", "X-Multi"],
        "emulated_headers": ["X-Over", "X-Emulated"],
        static_key: {static_field: {"X-Over": "static", "X-Static": "s"}},
    }


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_header_forwarding_and_precedence(
    via: str, kind: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, **header_opts(via))
    transport = CIMultiDict(
        [
            ("x-over", "transport"),
            ("Authorization", "Bearer t"),
            ("X-Not-Allowed", "nope"),
            ("X-Emulated", "from-transport-not-listed"),
        ]
    )
    emulated = {"X-Over": "emulated", "X-Emulated": "e", "Authorization": "emulated-auth"}
    await call(get(kind), kind, ctx(headers=transport, emulated_headers=emulated))
    req = backend.last(kind)
    assert req.headers["x-over"] == ["transport"]  # transport > emulated > static
    assert req.headers["authorization"] == ["Bearer t"]
    assert req.header("x-static") == "s"
    assert req.header("x-emulated") == "e"  # only emulated_headers lets it through
    assert "x-not-allowed" not in req.headers
    if via == "http":
        assert req.header("content-type") == "application/json"


@pytest.mark.parametrize("via", VIAS)
async def test_header_precedence_emulated_over_static(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, **header_opts(via))
    await get("rpc").rpc(ctx(headers={}, emulated_headers={"x-over": "emulated"}), "m", None)
    assert backend.last("rpc").headers["x-over"] == ["emulated"]
    await get("rpc").rpc(ctx(headers={}, emulated_headers={}), "m", None)
    assert backend.last("rpc").headers["x-over"] == ["static"]


@pytest.mark.parametrize("via", VIAS)
async def test_emulated_header_listed_only_in_http_headers_is_dropped(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, **header_opts(via))
    await get("connect").connect(ctx(headers={}, emulated_headers={"Authorization": "Bearer e"}))
    assert "authorization" not in backend.last("connect").headers


@pytest.mark.parametrize("via", VIAS)
async def test_repeated_transport_header_keeps_all_values(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, **header_opts(via))
    headers = CIMultiDict([("X-Multi", "one"), ("X-Multi", "two")])
    await get("rpc").rpc(ctx(headers=headers), "m", None)
    values = backend.last("rpc").headers["x-multi"]
    # HTTP servers may fold repeated headers; both values must arrive either way.
    assert sorted(v.strip() for vs in values for v in vs.split(",")) == ["one", "two"]


@pytest.mark.parametrize("via", VIAS)
async def test_grpc_transport_metadata_forwarded_when_no_http_headers(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, grpc_metadata=["x-md"], http_headers=["x-hdr"])
    await get("subscribe").subscribe(
        ctx(headers=None, grpc_metadata={"x-md": "meta-value", "x-hdr": "no", "other": "no"}),
        "ch",
    )
    req = backend.last("subscribe")
    assert req.header("x-md") == "meta-value"
    assert "x-hdr" not in req.headers and "other" not in req.headers
    # With HTTP headers present, incoming gRPC metadata is not consulted.
    await get("subscribe").subscribe(
        ctx(headers={"X-Hdr": "h"}, grpc_metadata={"x-md": "meta-value"}), "ch"
    )
    req = backend.last("subscribe")
    assert req.header("x-hdr") == "h" and "x-md" not in req.headers


@pytest.mark.parametrize("via", VIAS)
async def test_unusable_header_values_fail_the_call_only(
    via: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies(via, http_headers=["X-Bad", "Host", "Content-Length"])
    # Framing headers from the client are never copied: the request stays well-formed.
    backend.reply("rpc", {"result": {"data": {"ok": True}}})
    res = await get("rpc").rpc(ctx(headers={"Host": "evil", "Content-Length": "999"}), "m", None)
    assert orjson.loads(res.data) == {"ok": True}
    assert backend.last("rpc").header("content-length") != "999"
    # A value the transport cannot carry fails this call, and the next one works.
    with pytest.raises(ProxyUnavailable):
        await get("rpc").rpc(ctx(headers={"X-Bad": "line\nbreak"}), "m", None)
    res = await get("rpc").rpc(ctx(headers={"X-Bad": "fine"}), "m", None)
    assert orjson.loads(res.data) == {"ok": True}
    assert backend.last("rpc").header("x-bad") == "fine"


async def test_grpc_credentials_metadata(backend: ProxyBackend, proxies: Any) -> None:
    get = proxies("grpc", grpc={"credentials_key": "Authorization", "credentials_value": "k3y"})
    await get("rpc").rpc(ctx(), "m", None)
    assert backend.last("rpc").header("authorization") == "k3y"


async def test_grpc_compression(backend: ProxyBackend, proxies: Any) -> None:
    get = proxies("grpc", grpc={"compression": True})
    backend.reply("rpc", {"result": {"data": {"ok": 1}}})
    assert orjson.loads((await get("rpc").rpc(ctx(), "m", b'{"x":1}')).data) == {"ok": 1}
    # The server hides grpc-encoding from the handler; check what the channel was given.
    assert get("rpc")._caller.compression == grpc.Compression.Gzip
    assert orjson.loads(backend.last("rpc").raw_field("data")) == {"x": 1}


async def test_http_session_keeps_no_cookies(backend: ProxyBackend, proxies: Any) -> None:
    """The session is shared by all connections: a cookie set for one call must not leak."""
    get = proxies("http", http_headers=["Cookie"])
    backend.reply("connect", {"result": {"user": "1"}}, headers={"Set-Cookie": "sid=secret"})
    await get("connect").connect(ctx(headers={"Cookie": "mine=1"}))
    await get("rpc").rpc(ctx(headers={}), "m", None)
    assert "cookie" not in backend.last("rpc").headers
    await get("rpc").rpc(ctx(headers={"Cookie": "other=2"}), "m", None)
    assert backend.last("rpc").headers["cookie"] == ["other=2"]


# -------------------------------------------------------------------- status transforms


TRANSFORMS = [
    {"status_code": 403, "to_error": {"code": 1403, "message": "forbidden", "temporary": True}},
    {"status_code": 401, "to_disconnect": {"code": 4501, "reason": "unauthorized"}},
    {"status_code": 418},  # maps to nothing: stays a failure
]


@pytest.mark.parametrize("kind", REPLY_KINDS)
async def test_status_to_code_transforms(kind: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies("http", http={"status_to_code_transforms": TRANSFORMS})
    backend.status(kind, 403)
    with pytest.raises(ClientError) as ei:
        await call(get(kind), kind, ctx())
    assert (ei.value.code, ei.value.message, ei.value.temporary) == (1403, "forbidden", True)
    backend.status(kind, 401)
    with pytest.raises(Disconnect) as di:
        await call(get(kind), kind, ctx())
    assert (di.value.code, di.value.reason) == (4501, "unauthorized")
    for status in (418, 500):
        backend.status(kind, status)
        with pytest.raises(ProxyUnavailable):
            await call(get(kind), kind, ctx())


@pytest.mark.parametrize("kind", ["refresh", "sub_refresh"])
async def test_status_transform_on_refresh_expires(
    kind: str, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies("http", http={"status_to_code_transforms": TRANSFORMS})
    backend.status(kind, 403)
    assert (await call(get(kind), kind, ctx())).expired is True
    backend.status(kind, 500)
    with pytest.raises(ProxyUnavailable):
        await call(get(kind), kind, ctx())


# ---------------------------------------------------------------------- failure modes


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_timeout(via: str, kind: str, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies(via, timeout="300ms")
    backend.hang(kind)
    started = time.monotonic()
    with pytest.raises(ProxyUnavailable):
        await call(get(kind), kind, ctx())
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5
    assert len(backend.of_kind(kind)) == 1  # the backend did get the request


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_connection_refused(via: str, kind: str, make_manager: ManagerFactory) -> None:
    port = free_port()

    def endpoint(k: str) -> str:
        return f"http://127.0.0.1:{port}/{k}" if via == "http" else f"grpc://127.0.0.1:{port}"

    mgr = make_manager(all_kinds_config(endpoint, timeout="2s"))
    with pytest.raises(ProxyUnavailable):
        await call(proxy_of(mgr, kind), kind, ctx())


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("status", [201, 204, 400, 404, 500, 503])
async def test_http_non_200(kind: str, status: int, backend: ProxyBackend, proxies: Any) -> None:
    get = proxies("http")
    backend.status(kind, status)
    with pytest.raises(ProxyUnavailable):
        await call(get(kind), kind, ctx())


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED]
)
async def test_grpc_error_status(
    kind: str, code: grpc.StatusCode, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies("grpc")
    backend.status(kind, 500, grpc_code=code)
    with pytest.raises(ProxyUnavailable):
        await call(get(kind), kind, ctx())


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b'{"result": ',
        b"[]",
        b'"string"',
        b'{"result": {"user": 5, "expire_at": "x", "expired": "yes", "data": 1}, "error": 7}',
    ],
)
async def test_http_invalid_reply(
    kind: str, body: bytes, backend: ProxyBackend, proxies: Any
) -> None:
    get = proxies("http")
    backend.raw(kind, body)
    with pytest.raises(ProxyUnavailable):
        await call(get(kind), kind, ctx())


async def test_http_reply_with_huge_integer_payload(backend: ProxyBackend, proxies: Any) -> None:
    get = proxies("http")
    backend.raw("rpc", b'{"result":{"data":{"big":123456789012345678901234567890}}}')
    res = await get("rpc").rpc(ctx(), "m", None)
    assert json.loads(res.data) == {"big": 123456789012345678901234567890}


# ------------------------------------------------------------------- resolution / names


async def test_named_proxies_and_namespaces(
    backend: ProxyBackend, make_manager: ManagerFactory
) -> None:
    url = backend.http_url
    mgr = make_manager(
        {
            "proxies": [
                {"name": "alpha", "endpoint": url("alpha")},
                {"name": "beta", "endpoint": backend.grpc_url, "timeout": "2s"},
            ],
            "channel": {
                "proxy": {"subscribe": {"endpoint": url("default-subscribe")}},
                "without_namespace": {"subscribe_proxy_enabled": True},
                "namespaces": [
                    {
                        "name": "ns_a",
                        "subscribe_proxy_enabled": True,
                        "subscribe_proxy_name": "alpha",
                        "publish_proxy_enabled": True,
                        "publish_proxy_name": "alpha",
                    },
                    {"name": "ns_b", "publish_proxy_enabled": True, "publish_proxy_name": "beta"},
                    {"name": "plain"},
                ],
            },
            "rpc": {
                "proxy": {"endpoint": url("default-rpc")},
                "without_namespace": {"proxy_enabled": True},
                "namespaces": [
                    {"name": "ra", "proxy_enabled": True, "proxy_name": "alpha"},
                    {"name": "rb", "proxy_enabled": True, "proxy_name": "beta"},
                    {"name": "off"},
                ],
            },
        }
    )
    cfg: Config = mgr.config
    ns = {n.name: n for n in cfg.channel.namespaces}

    default_sub = mgr.subscribe_proxy(cfg.channel.without_namespace)
    alpha_sub = mgr.subscribe_proxy(ns["ns_a"])
    assert default_sub is not None and alpha_sub is not None
    assert mgr.publish_proxy(ns["ns_a"]) is alpha_sub  # one object per named proxy
    assert mgr.subscribe_proxy(ns["ns_b"]) is None and mgr.subscribe_proxy(ns["plain"]) is None
    assert mgr.publish_proxy(cfg.channel.without_namespace) is None
    assert mgr.connect_proxy() is None and mgr.refresh_proxy() is None
    beta = mgr.publish_proxy(ns["ns_b"])
    assert beta is not None and beta.protocol == "grpc" and beta.name == "beta"

    await default_sub.subscribe(ctx(), "x")
    await alpha_sub.subscribe(ctx(), "ns_a:x")
    await beta.publish(ctx(), "ns_b:x", b"{}")
    assert [r.path for r in backend.of_kind("default-subscribe")] == ["/default-subscribe"]
    assert [r.body["channel"] for r in backend.of_kind("alpha")] == ["ns_a:x"]
    assert backend.last("publish").via == "grpc"

    assert mgr.has_rpc_proxies is True
    assert mgr.rpc_proxy("plain_method").name == "default"
    assert mgr.rpc_proxy("ra:do") is alpha_sub
    assert mgr.rpc_proxy("rb:do") is beta
    with pytest.raises(ClientError) as ei:
        mgr.rpc_proxy("off:do")
    assert ei.value.code == 108
    with pytest.raises(ClientError) as ei:
        mgr.rpc_proxy("unknown:do")
    assert ei.value.code == 104
    await mgr.rpc_proxy("plain_method").rpc(ctx(), "plain_method", None)
    assert backend.last("default-rpc").body["method"] == "plain_method"


async def test_close_closes_shared_session_and_channels(
    backend: ProxyBackend, proxies: Any
) -> None:
    http_get = proxies("http")
    await http_get("rpc").rpc(ctx(), "m", None)
    await http_get("publish").publish(ctx(), "c", b"{}")
    mgr_sessions = {id(http_get(k)._caller._session()) for k in ("rpc", "publish", "connect")}
    assert len(mgr_sessions) == 1

    grpc_get = proxies("grpc")
    await grpc_get("rpc").rpc(ctx(), "m", None)
    caller = grpc_get("rpc")._caller
    assert caller._channel is not None


async def test_manager_close(backend: ProxyBackend, make_manager: ManagerFactory) -> None:
    mgr = make_manager(all_kinds_config(lambda k: backend.http_url(k)))
    p = mgr.rpc_proxy("m")
    await p.rpc(ctx(), "m", None)
    session = mgr._session
    assert session is not None and not session.closed
    gmgr = make_manager(all_kinds_config(lambda k: backend.grpc_url))
    gp = gmgr.rpc_proxy("m")
    await gp.rpc(ctx(), "m", None)
    await mgr.close()
    await gmgr.close()
    assert session.closed
    assert gp._caller._channel is None
    # A closed manager can still be used again (lazily reopens), e.g. across test loops.
    await gp.rpc(ctx(), "m", None)
    await gmgr.close()


# ---------------------------------------------------------------------------------- TLS


@pytest.fixture
async def tls_backend() -> AsyncIterator[tuple[ProxyBackend, bytes]]:
    cert, key = self_signed_cert()
    b = ProxyBackend()
    await b.start(tls=(cert, key))
    try:
        yield b, cert
    finally:
        await b.stop()


@pytest.mark.parametrize("via", VIAS)
async def test_tls_backend(
    via: str, tls_backend: tuple[ProxyBackend, bytes], make_manager: ManagerFactory
) -> None:
    backend, cert = tls_backend
    section = "http" if via == "http" else "grpc"
    tls = {"tls": {"enabled": True, "server_ca_pem": cert.decode()}}

    def endpoint(k: str) -> str:
        return backend.https_url(k) if via == "http" else backend.grpc_url

    mgr = make_manager(all_kinds_config(endpoint, **{section: tls}))
    backend.reply("connect", {"result": {"user": "tls-user"}})
    res = await mgr.connect_proxy().connect(ctx())  # type: ignore[union-attr]
    assert res is not None and res.user == "tls-user"

    # Without trusting the certificate the call fails.
    plain = make_manager(all_kinds_config(endpoint))
    with pytest.raises(ProxyUnavailable):
        await plain.connect_proxy().connect(ctx())  # type: ignore[union-attr]


# ------------------------------------------------------------------- concurrency sanity


@pytest.mark.parametrize("via", VIAS)
async def test_concurrent_calls(via: str, backend: ProxyBackend, proxies: Any) -> None:
    import asyncio

    get = proxies(via)
    backend.handler("rpc", lambda r: {"result": {"data": {"echo": r.body["method"]}}})
    calls: list[Awaitable[Any]] = [get("rpc").rpc(ctx(), f"m{i}", None) for i in range(50)]
    results = await asyncio.gather(*calls)
    assert [orjson.loads(r.data)["echo"] for r in results] == [f"m{i}" for i in range(50)]
