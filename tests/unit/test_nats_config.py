"""broker.type nats without a server: checkconfig's rules for broker.nats, which engines the
config builds (and that workers > 1 are allowed), Centrifugo's subject names and raw-mode
replacements, and the Push bytes against the generated protocol messages."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import ConfigError, load_config
from app.config.support import findings
from app.engines.build import build_engines, uses_memory_engine
from app.engines.memory import MemoryPresenceManager
from app.engines.nats import NatsBroker, codec
from app.engines.nats.subjects import Subjects, has_wildcard
from app.engines.redis.presence import RedisPresenceManager
from app.models import ClientInfo, Publication
from app.protocol.gen import client_pb2 as pb

NATS = {"broker.enabled": "true", "broker.type": "nats"}


def load(**flags: Any) -> Any:
    return load_config(None, env={}, flags={**NATS, **flags})


def test_broker_type_nats_is_accepted_and_built() -> None:
    cfg = load()
    engines = build_engines(cfg)
    assert isinstance(engines.broker, NatsBroker)
    assert engines.controller is engines.broker  # Centrifugo's NatsBroker is a Controller
    assert isinstance(engines.presence, MemoryPresenceManager)


def test_nats_with_redis_presence_manager() -> None:
    cfg = load(**{"presence_manager.enabled": "true", "presence_manager.type": "redis"})
    assert isinstance(build_engines(cfg).presence, RedisPresenceManager)


def test_nats_with_redis_engine_takes_its_presence() -> None:
    cfg = load(**{"engine.type": "redis"})
    engines = build_engines(cfg)
    assert isinstance(engines.broker, NatsBroker)
    assert isinstance(engines.presence, RedisPresenceManager)


def test_workers_are_nodes_on_nats_even_with_memory_presence() -> None:
    # Centrifugo's nodes on NATS with the memory presence manager keep presence per node.
    assert not uses_memory_engine(load())


def test_broker_nats_keys_are_no_longer_reported_unsupported() -> None:
    cfg = load(**{"broker.nats.allow_wildcards": "true", "broker.nats.raw_mode.enabled": "true"})
    assert not [f for f in findings(cfg) if "nats" in str(f)]


@pytest.mark.parametrize(
    "url",
    ["localhost:4222", "http://127.0.0.1:4222", "nats://", "nats://h:99999", "nats://h:1,bad"],
)
def test_bad_nats_url_is_refused_by_checkconfig(url: str) -> None:
    with pytest.raises(ConfigError, match="broker.nats.url"):
        load(**{"broker.nats.url": url})


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "tls://u:p@h:4222", "nats://a:1,nats://b:2", "ws://h:8080"]
)
def test_good_nats_urls(url: str) -> None:
    assert load(**{"broker.nats.url": url}).broker.nats.url == url


def test_unloadable_nats_tls_is_refused() -> None:
    with pytest.raises(ConfigError, match="broker.nats.tls.server_ca_pem"):
        load(**{"broker.nats.tls.enabled": "true", "broker.nats.tls.server_ca_pem": "not a pem"})


def test_unknown_broker_type_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="nats"):
        load(**{"broker.type": "kafka"})


def test_subjects_are_centrifugos() -> None:
    s = Subjects("centrifugo")
    assert s.control == "centrifugo.control"
    assert s.node("n1") == "centrifugo.node.n1"
    assert s.client("chat:index") == "centrifugo.client.chat:index"


def test_raw_mode_subjects_replace_in_one_pass() -> None:
    s = Subjects("ignored", raw=True, raw_prefix="p.", replacements={":": ".", ".": "_"})
    # One pass: the "." written for ":" is not replaced again (Go's strings.Replacer).
    assert s.client("a:b.c") == "p.a.b_c"
    assert Subjects("x", raw=True).client("a:b") == "a:b"


def test_wildcards() -> None:
    assert has_wildcard("a.*") and has_wildcard("a.>") and has_wildcard("a*b")
    assert not has_wildcard("a.b")


def test_publication_push_parses_as_the_protocol_message() -> None:
    info = ClientInfo("u", "c", b"{}", None)
    data = codec.encode_publication_push(
        "ch", Publication(b"x", info, 0, {"k": "v"}, 1700000000000, True)
    )
    push = pb.Push.FromString(data)
    want = pb.Push(channel="ch")
    want.pub.data = b"x"
    want.pub.info.user, want.pub.info.client, want.pub.info.conn_info = "u", "c", b"{}"
    want.pub.tags["k"] = "v"
    want.pub.time = 1700000000000
    want.pub.delta = True
    assert push == want


def test_join_leave_push_and_decoding() -> None:
    info = ClientInfo("u", "c", None, b'{"x":1}')
    join = codec.decode_push(codec.encode_join_push("ch", info))
    leave = codec.decode_push(codec.encode_leave_push("ch", info))
    assert (join.kind, join.channel, join.info) == ("join", "ch", info)
    assert (leave.kind, leave.channel, leave.info) == ("leave", "ch", info)
    with pytest.raises(codec.UndecodablePush):
        codec.decode_push(pb.Push(channel="ch").SerializeToString())
    with pytest.raises(codec.UndecodablePush):
        codec.decode_push(b"\xff\xff")


def test_epoch_tag_counts_only_with_an_offset() -> None:
    push = pb.Push(channel="ch")
    push.pub.data = b"d"
    push.pub.tags["__centrifugo_epoch"] = "e"
    got = codec.decode_push(push.SerializeToString())
    assert got.pub is not None
    assert (got.epoch, got.pub.tags, got.pub.offset) == ("", None, 0)


def test_concrete_channel_goes_on_both_client_wires() -> None:
    from app.protocol.json import JSON
    from app.protocol.protobuf import PROTOBUF

    pub = Publication(b'{"a":1}', channel="news.sport")
    frame = JSON.encode_pub_push("news.*", pub)
    assert frame == (b'{"push":{"channel":"news.*","pub":{"data":{"a":1},"channel":"news.sport"}}}')
    reply = pb.Reply()
    raw = PROTOBUF.encode_pub_push("news.*", pub)
    reply.ParseFromString(raw[1:])  # one-byte length prefix
    assert (reply.push.channel, reply.push.pub.channel) == ("news.*", "news.sport")
    # Without a concrete channel nothing changes (the JSON fast path).
    assert (
        JSON.encode_pub_push("c", Publication(b"1")) == b'{"push":{"channel":"c","pub":{"data":1}}}'
    )
