"""Proxy layer without the network: request building, reply parsing, headers, resolution."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from app.auth import SubscribeOverride
from app.config import Config, load_config
from app.errors import ClientError, Disconnect
from app.proxy import ProxyContext, ProxyManager, ProxyUnavailable
from app.proxy import models as m
from app.proxy.gen import proxy_pb2 as pb
from app.proxy.grpc import grpc_request_metadata, grpc_target, message_to_dict
from app.proxy.http import HTTPCaller, encode_json_request, http_request_headers
from app.tls import load_pem

ROOT = Path(__file__).resolve().parents[2]


def ctx(**kw: Any) -> ProxyContext:
    base: dict[str, Any] = {"client": "cid", "transport": "websocket", "protocol": "json"}
    base.update(kw)
    return ProxyContext(**base)


def config(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return load_config(str(path))


# ------------------------------------------------------------------------------ requests


def test_connect_request_fields_and_omitempty() -> None:
    req = m.connect_request(
        ctx(user="ignored"), binary=False, data=b'{"a":1}', name="n", version="v", channels=["x"]
    )
    assert req == {
        "client": "cid",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "data": b'{"a":1}',
        "name": "n",
        "version": "v",
        "channels": ["x"],
    }
    bare = m.connect_request(ctx(), binary=False)
    assert bare == {
        "client": "cid",
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
    }


def test_user_always_present_for_non_connect_kinds() -> None:
    c = ctx(user="")
    assert m.refresh_request(c, binary=False, include_meta=False)["user"] == ""
    assert m.subscribe_request(c, "ch", binary=False, include_meta=False)["user"] == ""
    assert m.publish_request(c, "ch", b"{}", binary=False, include_meta=False)["user"] == ""
    assert m.rpc_request(c, "meth", None, binary=False, include_meta=False)["user"] == ""
    assert m.sub_refresh_request(c, "ch", binary=False, include_meta=False)["user"] == ""


def test_kind_specific_fields() -> None:
    c = ctx(user="u")
    sub = m.subscribe_request(c, "ch", binary=False, include_meta=False, token="t", data=b"[1]")
    assert (sub["channel"], sub["token"], sub["data"]) == ("ch", "t", b"[1]")
    assert "token" not in m.subscribe_request(c, "ch", binary=False, include_meta=False)
    pub = m.publish_request(c, "ch", b'"x"', binary=False, include_meta=False)
    assert (pub["channel"], pub["data"]) == ("ch", b'"x"')
    rpc = m.rpc_request(c, "do", None, binary=False, include_meta=False)
    assert rpc["method"] == "do" and "data" not in rpc
    assert "method" not in m.rpc_request(c, "", None, binary=False, include_meta=False)
    sr = m.sub_refresh_request(c, "ch", binary=False, include_meta=False)
    assert sr["channel"] == "ch" and "data" not in sr


def test_meta_only_when_included_and_present() -> None:
    assert m.refresh_request(ctx(meta=b'{"m":1}'), binary=False, include_meta=True)["meta"] == (
        b'{"m":1}'
    )
    assert "meta" not in m.refresh_request(ctx(meta=b'{"m":1}'), binary=False, include_meta=False)
    assert "meta" not in m.refresh_request(ctx(meta=None), binary=False, include_meta=True)
    assert "meta" not in m.connect_request(ctx(meta=b'{"m":1}'), binary=False)


def test_binary_encoding() -> None:
    req = m.publish_request(
        ctx(protocol="protobuf"), "c", b"\x00\xff", binary=True, include_meta=False
    )
    assert req["encoding"] == "binary"
    assert base64.b64decode(req["b64data"]) == b"\x00\xff"
    assert "data" not in req
    assert "b64data" not in m.publish_request(ctx(), "c", b"", binary=True, include_meta=False)


def test_non_json_payload_rejected_for_protobuf_clients_only() -> None:
    with pytest.raises(ProxyUnavailable):
        m.rpc_request(ctx(protocol="protobuf"), "m", b"\xff", binary=False, include_meta=False)
    ok = m.rpc_request(ctx(protocol="protobuf"), "m", b"[1]", binary=False, include_meta=False)
    assert ok["data"] == b"[1]"


def test_json_body_splices_raw_fields() -> None:
    fields = m.publish_request(
        ctx(user="u", meta=b'{"z" : 1.50}'),
        "ch",
        b'{"b":2,  "a":1}',
        binary=False,
        include_meta=True,
    )
    body = encode_json_request(fields)
    assert b'"data":{"b":2,  "a":1}' in body
    assert b'"meta":{"z" : 1.50}' in body
    assert orjson.loads(body)["user"] == "u"


def test_protobuf_request_accepts_request_dicts() -> None:
    fields = m.subscribe_request(
        ctx(user="u", meta=b"{}"), "ch", binary=False, include_meta=True, token="t", data=b"1"
    )
    msg = pb.SubscribeRequest(**fields)
    assert (msg.user, msg.channel, msg.token, msg.data, msg.meta) == ("u", "ch", "t", b"1", b"{}")
    # Field numbers are part of the wire contract with Centrifugo backends.
    numbers = {f.name: f.number for f in pb.SubscribeRequest.DESCRIPTOR.fields}
    assert numbers == {
        "client": 1,
        "transport": 2,
        "protocol": 3,
        "encoding": 4,
        "user": 10,
        "channel": 11,
        "token": 12,
        "meta": 13,
        "data": 14,
        "b64data": 15,
        "labels": 16,
    }


def test_proto_package_and_service_names() -> None:
    assert pb.DESCRIPTOR.package == "centrifugal.centrifugo.proxy"
    service = pb.DESCRIPTOR.services_by_name["CentrifugoProxy"]
    assert {"Connect", "Refresh", "Subscribe", "Publish", "RPC", "SubRefresh"} <= set(
        service.methods_by_name
    )
    assert {f.name: f.number for f in pb.ConnectResult.DESCRIPTOR.fields}["meta"] == 9
    assert {f.name: f.number for f in pb.PublishResult.DESCRIPTOR.fields}["idempotency_key"] == 5


# ----------------------------------------------------------------------------- responses


def test_decode_json_response() -> None:
    assert m.decode_json_response("rpc", b'{"result":{}}') == {"result": {}}
    big = m.decode_json_response("rpc", b'{"result":{"data":123456789012345678901234567890}}')
    assert m.parse_rpc(big, from_json=True).data == b"123456789012345678901234567890"
    for bad in (b"", b"nope", b"[]", b"1", b'{"a":NaN}', b"\xff"):
        with pytest.raises(ProxyUnavailable):
            m.decode_json_response("rpc", bad)


def test_proxy_payloads_are_the_bytes_the_backend_sent() -> None:
    """Payloads are opaque: nothing a parse-and-dump round trip would change is changed."""
    for data in (b"1E2", b'{"a":1,"a":2}', b"0.1000000000000000055511151231257827", b"null"):
        body = b'{"result":{"data":%s,"info":%s,"subs":{"c":{"data":%s}}}}' % (data, data, data)
        res = m.parse_connect(m.decode_json_response("connect", body), from_json=True)
        assert res is not None
        assert (res.data, res.info, res.subs["c"].data) == (data, data, data)
        body = b'{"result":{"data":%s}}' % data
        assert m.parse_publish(m.decode_json_response("publish", body), from_json=True).data == data


def test_disconnect_wins_over_error_wins_over_result() -> None:
    reply = {
        "result": {"user": "x"},
        "error": {"code": 1000, "message": "e", "temporary": True},
        "disconnect": {"code": 4001, "reason": "d"},
    }
    with pytest.raises(Disconnect) as di:
        m.parse_connect(reply, from_json=True)
    assert (di.value.code, di.value.reason) == (4001, "d")
    del reply["disconnect"]
    with pytest.raises(ClientError) as ei:
        m.parse_connect(reply, from_json=True)
    assert (ei.value.code, ei.value.message, ei.value.temporary) == (1000, "e", True)


def test_error_message_kept_as_sent() -> None:
    with pytest.raises(ClientError) as ei:
        m.parse_rpc({"error": {"code": 100}}, from_json=True)
    # An empty message stays empty (no standard text substituted), as Centrifugo sends it.
    assert (ei.value.code, ei.value.message, ei.value.temporary) == (100, "", False)


def test_null_parts_are_absent() -> None:
    assert m.parse_connect({"result": None, "error": None}, from_json=True) is None
    assert m.parse_subscribe({"result": None}, from_json=True) == m.SubscribeProxyResult()
    res = m.parse_connect({"result": {"user": None, "expire_at": None}}, from_json=True)
    assert res is not None and (res.user, res.expire_at) == ("", 0)


def test_raw_fields_keep_json_text_including_null() -> None:
    res = m.parse_connect(
        {"result": {"info": None, "data": {"a": [1, "é"]}, "meta": "s"}}, from_json=True
    )
    assert res is not None
    assert res.info == b"null"
    assert orjson.loads(res.data) == {"a": [1, "é"]}
    assert res.meta == b'"s"'


def test_b64_wins_except_publish_data() -> None:
    b64 = base64.b64encode(b"bin").decode()
    assert m.parse_rpc({"result": {"data": 1, "b64data": b64}}, from_json=True).data == b"bin"
    # publish: a present `data` wins over `b64data` (Centrifugo's publish handler order)
    pub = m.parse_publish({"result": {"data": 1, "b64data": b64}}, from_json=True)
    assert pub.data == b"1"
    assert m.parse_publish({"result": {"b64data": b64}}, from_json=True).data == b"bin"


def test_invalid_types_are_unusable() -> None:
    bad_replies = [
        ({"result": {"user": 1}}, m.parse_connect),
        ({"result": {"expire_at": "1"}}, m.parse_connect),
        ({"result": {"expire_at": True}}, m.parse_subscribe),
        ({"result": {"expire_at": 1.5}}, m.parse_sub_refresh),
        ({"result": {"expired": 1}}, m.parse_refresh),
        ({"result": {"channels": "a"}}, m.parse_connect),
        ({"result": {"subs": []}}, m.parse_connect),
        ({"result": {"tags": {"a": 1}}}, m.parse_publish),
        ({"result": {"override": {"presence": {"value": "yes"}}}}, m.parse_subscribe),
        ({"result": {"b64data": "%%%"}}, m.parse_rpc),
        ({"result": []}, m.parse_rpc),
        ({"error": {"code": -1}}, m.parse_publish),
        ({"error": "x"}, m.parse_publish),
        ({"disconnect": {"code": "4000"}}, m.parse_subscribe),
        # Go decodes the whole reply before acting: a bad `error` fails it beside a disconnect.
        ({"disconnect": {}, "error": 2**63}, m.parse_connect),
        ({"disconnect": {"code": 4001}, "error": {"code": -1}}, m.parse_rpc),
    ]
    for reply, parse in bad_replies:
        with pytest.raises(ProxyUnavailable):
            parse(reply, from_json=True)


def test_override_parsing() -> None:
    res = m.parse_subscribe(
        {"result": {"override": {"presence": {}, "force_recovery": {"value": True}}}},
        from_json=True,
    )
    assert res.override == SubscribeOverride(presence=False, force_recovery=True)
    assert m.parse_subscribe({"result": {"override": {}}}, from_json=True).override == (
        SubscribeOverride()
    )


def test_connect_subs_parsing() -> None:
    b64 = base64.b64encode(b"\x01").decode()
    res = m.parse_connect(
        {
            "result": {
                "subs": {
                    "a": {"info": {"x": 1}, "b64data": b64, "expire_at": 5},
                    "b": None,
                }
            }
        },
        from_json=True,
    )
    assert res is not None
    assert res.subs["a"].info == b'{"x":1}' and res.subs["a"].data == b"\x01"
    assert res.subs["b"].info is None and res.subs["b"].override is None


def test_refresh_result_rules() -> None:
    assert m.parse_refresh({}, from_json=True).expired is True
    assert m.parse_refresh({"error": {"code": 1}}, from_json=True).expired is True
    res = m.parse_refresh({"result": {"expire_at": 7, "meta": {"k": 1}}}, from_json=True)
    assert (res.expired, res.expire_at, res.meta) == (False, 7, b'{"k":1}')
    # An `expired` result drops everything else.
    res = m.parse_refresh({"result": {"expired": True, "expire_at": 7}}, from_json=True)
    assert (res.expired, res.expire_at) == (True, 0)


def test_protobuf_reply_parsing() -> None:
    reply = pb.ConnectResponse(
        result=pb.ConnectResult(
            user="u",
            expire_at=9,
            info=b'{"i":1}',
            channels=["a"],
            subs={
                "s": pb.SubscribeOptions(
                    data=b"[1]", override=pb.SubscribeOptionOverride(presence=pb.BoolValue())
                )
            },
            meta=b"{}",
        )
    )
    d = message_to_dict(reply)
    res = m.parse_connect(d, from_json=False)
    assert res is not None
    assert (res.user, res.expire_at, res.info, res.channels, res.meta) == (
        "u",
        9,
        b'{"i":1}',
        ["a"],
        b"{}",
    )
    assert res.subs["s"].data == b"[1]"
    assert res.subs["s"].override == SubscribeOverride(presence=False)
    assert res.data is None  # empty bytes = not set

    # An empty reply message has no result at all.
    assert m.parse_connect(message_to_dict(pb.ConnectResponse()), from_json=False) is None
    # A set-but-empty result is still a result.
    empty = message_to_dict(pb.SubRefreshResponse(result=pb.SubRefreshResult()))
    assert m.parse_sub_refresh(empty, from_json=False).expired is False

    pub = message_to_dict(
        pb.PublishResponse(result=pb.PublishResult(tags={"a": "b"}, skip_history=True))
    )
    pres = m.parse_publish(pub, from_json=False)
    assert (pres.tags, pres.skip_history, pres.data) == ({"a": "b"}, True, None)

    err = message_to_dict(pb.RPCResponse(error=pb.Error(code=1400, message="m")))
    with pytest.raises(ClientError) as ei:
        m.parse_rpc(err, from_json=False)
    assert (ei.value.code, ei.value.message) == (1400, "m")


# ------------------------------------------------------------------------------- headers


def proxy_cfg(tmp_path: Path, **opts: Any) -> Any:
    cfg = config(tmp_path, {"rpc": {"proxy": {"endpoint": "http://127.0.0.1:1/rpc", **opts}}})
    return cfg.rpc.proxy


def test_http_headers_precedence(tmp_path: Path) -> None:
    cfg = proxy_cfg(
        tmp_path,
        http_headers=["X-A", "x-b", "X-Both"],
        emulated_headers=["x-a", "X-E", "X-Both"],
        http={"static_headers": {"X-A": "static", "X-S": "s", "Content-Type": "text/plain"}},
    )
    headers = http_request_headers(
        cfg,
        ctx(
            headers=CIMultiDict([("x-a", "t1"), ("X-A", "t2"), ("X-B", "b"), ("X-C", "c")]),
            emulated_headers={"X-A": "emu", "X-E": "e", "X-Both": "emu-both", "X-B": "emu-b"},
        ),
    )
    assert headers.getall("x-a") == ["t1", "t2"]  # transport wins, keeping repeated values
    assert headers["x-b"] == "b"
    assert headers["x-e"] == "e"
    assert headers["x-both"] == "emu-both"  # no transport value: the emulated one stays
    assert headers["x-s"] == "s"
    assert "x-c" not in headers
    assert headers.getall("content-type") == ["application/json"]


def test_http_headers_from_grpc_metadata_when_no_http_headers(tmp_path: Path) -> None:
    cfg = proxy_cfg(tmp_path, http_headers=["x-h"], grpc_metadata=["x-m"])
    h = http_request_headers(cfg, ctx(headers=None, grpc_metadata={"x-m": "1", "x-h": "2"}))
    assert h.get("x-m") == "1" and "x-h" not in h
    h = http_request_headers(cfg, ctx(headers={"X-H": "3"}, grpc_metadata={"x-m": "1"}))
    assert h.get("x-h") == "3" and "x-m" not in h


def test_grpc_metadata_precedence(tmp_path: Path) -> None:
    cfg = proxy_cfg(
        tmp_path,
        endpoint="grpc://127.0.0.1:1",
        http_headers=["X-A"],
        emulated_headers=["X-A", "X-E"],
        grpc={"static_metadata": {"X-A": "static", "x-s": "s"}},
    )
    md = grpc_request_metadata(
        cfg, ctx(headers={"X-A": "t"}, emulated_headers={"X-A": "emu", "X-E": "e"})
    )
    assert sorted(md) == [("x-a", "t"), ("x-e", "e"), ("x-s", "s")]
    md = grpc_request_metadata(cfg, ctx(headers={}, emulated_headers={"x-a": "emu"}))
    assert sorted(md) == [("x-a", "emu"), ("x-s", "s")]


def test_framing_headers_never_forwarded(tmp_path: Path) -> None:
    cfg = proxy_cfg(
        tmp_path,
        http_headers=["Host", "Content-Length", "Connection", "X-Ok"],
        http={"static_headers": {"Transfer-Encoding": "chunked"}},
    )
    h = http_request_headers(
        cfg,
        ctx(headers={"Host": "evil", "Content-Length": "1", "Connection": "close", "X-Ok": "1"}),
    )
    assert dict(h) == {"X-Ok": "1", "Content-Type": "application/json"}


def test_grpc_binary_metadata_is_bytes(tmp_path: Path) -> None:
    cfg = proxy_cfg(tmp_path, endpoint="grpc://127.0.0.1:1", http_headers=["X-Trace-Bin", "X-T"])
    md = grpc_request_metadata(cfg, ctx(headers={"X-Trace-Bin": "abc", "X-T": "t"}))
    assert sorted(md, key=lambda kv: kv[0]) == [("x-t", "t"), ("x-trace-bin", b"abc")]


def test_grpc_target() -> None:
    assert grpc_target("grpc://127.0.0.1:9000") == "127.0.0.1:9000"
    assert grpc_target("localhost:9000") == "localhost:9000"


def test_status_transforms_first_usable_entry_wins(tmp_path: Path) -> None:
    cfg = proxy_cfg(
        tmp_path,
        http={
            "status_to_code_transforms": [
                {"status_code": 404},
                {"status_code": 404, "to_disconnect": {"code": 4404, "reason": "gone"}},
                {"status_code": 404, "to_error": {"code": 1404, "message": "late"}},
                {"status_code": 409, "to_error": {"code": 1409, "message": "conflict"}},
            ]
        },
    )
    caller = HTTPCaller("x", cfg, lambda: None)  # type: ignore[arg-type,return-value]
    assert caller._transforms == {
        404: {"disconnect": {"code": 4404, "reason": "gone"}},
        409: {"error": {"code": 1409, "message": "conflict", "temporary": False}},
    }


# ---------------------------------------------------------------------------- resolution


def test_manager_without_proxies(tmp_path: Path) -> None:
    mgr = ProxyManager(config(tmp_path, {}))
    cfg = mgr.config
    assert mgr.connect_proxy() is None and mgr.refresh_proxy() is None
    assert mgr.subscribe_proxy(cfg.channel.without_namespace) is None
    assert mgr.publish_proxy(cfg.channel.without_namespace) is None
    assert mgr.sub_refresh_proxy(cfg.channel.without_namespace) is None
    assert mgr.has_rpc_proxies is False
    with pytest.raises(ClientError) as ei:
        mgr.rpc_proxy("anything")
    assert ei.value.code == 108
    assert mgr.proxies == []


def test_manager_resolution(tmp_path: Path) -> None:
    mgr = ProxyManager(
        config(
            tmp_path,
            {
                "client": {
                    "proxy": {
                        "connect": {"enabled": True, "endpoint": "http://h/connect"},
                        "refresh": {"enabled": False, "endpoint": "http://h/refresh"},
                    }
                },
                "proxies": [{"name": "shared", "endpoint": "grpc://h:1"}],
                "channel": {
                    "proxy": {
                        "subscribe": {"endpoint": "http://h/sub"},
                        "publish": {"endpoint": "https://h/pub", "binary_encoding": True},
                    },
                    "without_namespace": {
                        "subscribe_proxy_enabled": True,
                        "publish_proxy_enabled": True,
                    },
                    "namespaces": [
                        {
                            "name": "ns1",
                            "subscribe_proxy_enabled": True,
                            "subscribe_proxy_name": "shared",
                            "sub_refresh_proxy_enabled": True,
                            "sub_refresh_proxy_name": "shared",
                        }
                    ],
                },
                "rpc": {
                    "namespace_boundary": ".",
                    "namespaces": [{"name": "r1", "proxy_enabled": True, "proxy_name": "shared"}],
                },
            },
        )
    )
    cfg = mgr.config
    ns1 = cfg.namespace("ns1")
    assert ns1 is not None
    connect = mgr.connect_proxy()
    assert connect is not None and connect.protocol == "http" and connect.name == "default"
    assert mgr.refresh_proxy() is None
    sub = mgr.subscribe_proxy(cfg.channel.without_namespace)
    pub = mgr.publish_proxy(cfg.channel.without_namespace)
    assert sub is not None and pub is not None and sub is not pub
    assert pub.binary is True and sub.binary is False
    shared = mgr.subscribe_proxy(ns1)
    assert shared is not None and shared.protocol == "grpc" and shared.name == "shared"
    assert mgr.sub_refresh_proxy(ns1) is shared
    assert mgr.has_rpc_proxies is True
    assert mgr.rpc_proxy("r1.call") is shared
    with pytest.raises(ClientError) as ei:
        mgr.rpc_proxy("call")  # without_namespace has no proxy
    assert ei.value.code == 108
    with pytest.raises(ClientError) as ei:
        mgr.rpc_proxy("r2.call")
    assert ei.value.code == 104
    # r1:call has no "." boundary: it is a method without namespace
    assert mgr.rpc_options("r1:call") is cfg.rpc.without_namespace
    assert len(mgr.proxies) == 4


# ----------------------------------------------------------------------------------- TLS


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_load_pem_forms(tmp_path: Path) -> None:
    assert load_pem(PEM, "x") == PEM.encode()
    assert load_pem(base64.b64encode(PEM.encode()).decode(), "x") == PEM.encode()
    path = tmp_path / "c.pem"
    path.write_text(PEM)
    assert load_pem(str(path), "x") == PEM.encode()
    bad = tmp_path / "bad.pem"
    bad.write_text("nothing")
    with pytest.raises(ValueError, match="x"):
        load_pem(str(bad), "x")
    with pytest.raises(ValueError, match="x"):
        load_pem("not a pem", "x")


# ------------------------------------------------------------------------ generated code


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    """app/proxy/gen was generated from the current proto/proxy.proto."""
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--descriptor_set_out={tmp_path / 'set.pb'}",
            str(ROOT / "proto" / "proxy.proto"),
        ],
        check=True,
    )
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes())
    fresh = fds.file[0]
    current = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)

    def strip_json_names(fd: descriptor_pb2.FileDescriptorProto) -> None:
        # --descriptor_set_out adds json_name; the embedded descriptor leaves it out.
        stack = list(fd.message_type)
        while stack:
            msg = stack.pop()
            for f in msg.field:
                f.ClearField("json_name")
            stack.extend(msg.nested_type)

    strip_json_names(fresh)
    assert len(current.message_type) > 20
    assert fresh == current
