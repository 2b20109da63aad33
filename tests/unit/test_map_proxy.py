"""Map publish and map remove proxies without the network: request shapes, reply rules,
which proxy serves a namespace, and the config rule that refuses `map.client_key` beside
either proxy (Centrifugo's validate.go)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.config import Config, ConfigError, load_config
from app.errors import ClientError, Disconnect
from app.maps.broker import KeyMode
from app.proxy import ProxyContext, ProxyManager, ProxyUnavailable
from app.proxy import maps as mp
from app.proxy.gen import proxy_pb2 as pb
from app.proxy.grpc import message_to_dict
from app.proxy.http import encode_json_request
from app.proxy.models import decode_json_response


def ctx(**kw: Any) -> ProxyContext:
    return ProxyContext(**{"client": "cid", "transport": "websocket", "protocol": "json", **kw})


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def config(tmp_path: Path, data: dict[str, Any]) -> Config:
    return load_config(write(tmp_path, data), env={})


# ------------------------------------------------------------------------------ requests


def test_map_requests_omit_every_empty_field_user_included() -> None:
    req = mp.map_publish_request(
        ctx(user="u", meta=b'{"m":1}'), "ch", "k", b'{"a":1}', binary=False, include_meta=True
    )
    assert req == {
        "client": "cid",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "u",
        "channel": "ch",
        "key": "k",
        "data": b'{"a":1}',
        "meta": b'{"m":1}',
    }
    assert orjson.loads(encode_json_request(req))["data"] == {"a": 1}
    anonymous = mp.map_publish_request(ctx(), "ch", "", b"", binary=False, include_meta=True)
    assert anonymous == {
        "client": "cid",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "channel": "ch",
    }
    remove = mp.map_remove_request(
        ctx(user="u", meta=b"{}"), "ch", "k", binary=True, include_meta=False
    )
    assert remove == {
        "client": "cid",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "binary",
        "user": "u",
        "channel": "ch",
        "key": "k",
    }


def test_binary_map_publish_sends_b64data_and_json_refuses_non_json_protobuf_payloads() -> None:
    req = mp.map_publish_request(
        ctx(protocol="protobuf"), "ch", "k", b"\x00\x01", binary=True, include_meta=False
    )
    assert req["b64data"] == base64.b64encode(b"\x00\x01").decode() and "data" not in req
    with pytest.raises(ProxyUnavailable):
        mp.map_publish_request(
            ctx(protocol="protobuf"), "ch", "k", b"\x00\x01", binary=False, include_meta=False
        )


def test_protobuf_requests_accept_the_request_dicts() -> None:
    req = mp.map_publish_request(ctx(user="u"), "ch", "k", b"[1]", binary=False, include_meta=False)
    msg = pb.MapPublishRequest(**req)
    assert (msg.user, msg.channel, msg.key, msg.data) == ("u", "ch", "k", b"[1]")
    msg2 = pb.MapRemoveRequest(
        **mp.map_remove_request(ctx(), "ch", "k", binary=False, include_meta=False)
    )
    assert (msg2.channel, msg2.key) == ("ch", "k")


# ----------------------------------------------------------------------------- responses


def parse_http(kind: str, body: dict[str, Any]) -> Any:
    decoded = decode_json_response(kind, orjson.dumps(body))
    parse = mp.parse_map_publish if kind == "map_publish" else mp.parse_map_remove
    return parse(decoded, from_json=True)


def test_map_publish_result_fields() -> None:
    res = parse_http(
        "map_publish",
        {
            "result": {
                "key": "k2",
                "data": {"x": 1},
                "b64data": base64.b64encode(b"ignored").decode(),
                "tags": {"t": "v"},
                "key_mode": "if_exists",
                "idempotency_key": "i",
                "delta": True,
                "version": 7,
                "version_epoch": "e",
                "score": 3,
                "stream_data": {"ignored": True},
            }
        },
    )
    assert res == mp.MapPublishProxyResult(
        key="k2",
        data=b'{"x":1}',
        tags={"t": "v"},
        key_mode=KeyMode.IF_EXISTS,
        idempotency_key="i",
        delta=True,
        version=7,
        version_epoch="e",
    )
    b64 = parse_http("map_publish", {"result": {"b64data": base64.b64encode(b"raw").decode()}})
    assert b64.data == b"raw"
    assert parse_http("map_publish", {}) == mp.MapPublishProxyResult()
    assert (
        parse_http("map_publish", {"result": {"key_mode": "sometimes"}}).key_mode is KeyMode.REPLACE
    )
    with pytest.raises(ProxyUnavailable):
        parse_http("map_publish", {"result": {"b64data": "%%%"}})
    with pytest.raises(ProxyUnavailable):
        parse_http("map_publish", {"result": {"version": -1}})


def test_map_remove_result_fields() -> None:
    res = parse_http(
        "map_remove", {"result": {"key": "k2", "tags": {"t": "v"}, "idempotency_key": "i"}}
    )
    assert res == mp.MapRemoveProxyResult(key="k2", tags={"t": "v"}, idempotency_key="i")
    assert parse_http("map_remove", {"result": {"tags": {}}}) == mp.MapRemoveProxyResult()


@pytest.mark.parametrize("kind", ["map_publish", "map_remove"])
def test_disconnect_wins_over_error_wins_over_result(kind: str) -> None:
    both = {
        "result": {"key": "k"},
        "error": {"code": 1403, "message": "no", "temporary": True},
        "disconnect": {"code": 4403, "reason": "bye"},
    }
    with pytest.raises(Disconnect) as d:
        parse_http(kind, both)
    assert (d.value.code, d.value.reason) == (4403, "bye")
    del both["disconnect"]
    with pytest.raises(ClientError) as e:
        parse_http(kind, both)
    assert (e.value.code, e.value.message, e.value.temporary) == (1403, "no", True)


def test_protobuf_replies() -> None:
    reply = pb.MapPublishResponse(
        result=pb.MapPublishResult(key="k", data=b'{"a":1}', tags={"t": "1"}, key_mode="if_new")
    )
    res = mp.parse_map_publish(message_to_dict(reply), from_json=False)
    assert (res.key, res.data, res.tags, res.key_mode) == (
        "k",
        b'{"a":1}',
        {"t": "1"},
        KeyMode.IF_NEW,
    )
    removal = pb.MapRemoveResponse(error=pb.Error(code=1404, message="nope"))
    with pytest.raises(ClientError):
        mp.parse_map_remove(message_to_dict(removal), from_json=False)


# ---------------------------------------------------------------------------- resolution


def test_manager_resolves_default_and_named_map_proxies(tmp_path: Path) -> None:
    base = {"subscription_type": "map", "allow_subscribe_for_client": True}
    mgr = ProxyManager(
        config(
            tmp_path,
            {
                "proxies": [{"name": "shared", "endpoint": "grpc://h:1"}],
                "channel": {
                    "proxy": {
                        "map_publish": {"endpoint": "http://h/mpub", "binary_encoding": True},
                        "map_remove": {"endpoint": "http://h/mrem"},
                    },
                    "namespaces": [
                        {
                            "name": "na",
                            **base,
                            "map": {
                                "mode": "persistent",
                                "publish_proxy_enabled": True,
                                "remove_proxy_enabled": True,
                            },
                        },
                        {
                            "name": "nb",
                            **base,
                            "map": {
                                "mode": "persistent",
                                "publish_proxy_enabled": True,
                                "publish_proxy_name": "shared",
                                "remove_proxy_enabled": True,
                                "remove_proxy_name": "shared",
                            },
                        },
                        {"name": "nc", **base, "map": {"mode": "persistent"}},
                    ],
                },
            },
        )
    )
    a, b, c = (mgr.config.namespace(n) for n in ("na", "nb", "nc"))
    assert a is not None and b is not None and c is not None
    pub, rem = mgr.map_publish_proxy(a), mgr.map_remove_proxy(a)
    assert pub is not None and rem is not None and pub is not rem
    assert (pub.name, pub.protocol, pub.binary) == ("default", "http", True)
    assert rem.config.endpoint == "http://h/mrem"
    shared = mgr.map_publish_proxy(b)
    assert shared is not None and shared.name == "shared" and shared.protocol == "grpc"
    assert mgr.map_remove_proxy(b) is shared
    assert mgr.map_publish_proxy(c) is None and mgr.map_remove_proxy(c) is None
    # The stream publish proxy is another section: not enabled by the map one.
    assert mgr.publish_proxy(a) is None
    assert len(mgr.proxies) == 3


@pytest.mark.parametrize("kind", ["publish", "remove"])
def test_client_key_beside_a_map_proxy_refuses_the_start(tmp_path: Path, kind: str) -> None:
    ns = {
        "name": "mm",
        "subscription_type": "map",
        "map": {"mode": "persistent", "client_key": "client_id", f"{kind}_proxy_enabled": True},
    }
    data = {
        "channel": {
            "proxy": {f"map_{kind}": {"endpoint": "http://h:1"}},
            "namespaces": [ns],
        }
    }
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data), env={})
    assert str(e.value) == (
        f"channel.namespaces[mm]: map.client_key is not compatible with "
        f"map.{kind}_proxy_enabled: the proxy is responsible for keying when enabled"
    )
