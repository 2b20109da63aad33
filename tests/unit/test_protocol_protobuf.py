"""Protobuf codec of client protocol v2: framing, command decoding, reply/push encoding.

Frames are checked by parsing them back with generated classes: ours (app.protocol.gen) and,
as an independent reading of the wire, the ones centrifuge-python ships.
"""

from __future__ import annotations

import orjson
import pytest
from centrifuge.protocol import client_pb2 as sdk_pb
from google.protobuf.internal.decoder import _DecodeVarint

from app import protocol as proto
from app.hub import Frames
from app.models import ClientInfo, Publication
from app.protocol.gen import client_pb2 as pb
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF, PROTOBUF_UNI, ProtobufCodec, varint


def delimited(*messages) -> bytes:
    out = b""
    for m in messages:
        body = m if isinstance(m, bytes) else m.SerializeToString(deterministic=True)
        out += varint(len(body)) + body
    return out


def split(frame: bytes) -> list[bytes]:
    """Varint-delimited messages of a frame (independent of the codec's parser)."""
    out, pos = [], 0
    while pos < len(frame):
        n, pos = _DecodeVarint(frame, pos)
        out.append(frame[pos : pos + n])
        pos += n
    assert pos == len(frame)
    return out


def reply(frame: bytes, cls=pb.Reply):
    (body,) = split(frame)
    return cls.FromString(body)


# ----------------------------------------------------------------------------- varint


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1])
def test_varint_matches_protobuf(n):
    raw = pb.StreamPosition(offset=n).SerializeToString()
    assert raw == (b"\x08" + varint(n) if n else b"")
    assert _DecodeVarint(varint(n), 0) == (n, len(varint(n)))


def test_negative_int64_is_ten_bytes():
    assert varint(-1) == b"\xff" * 9 + b"\x01"


# ----------------------------------------------------------------------------- framing


def test_ping_is_an_empty_reply_and_an_empty_push():
    assert PROTOBUF.ping == PROTOBUF_UNI.ping == b"\x00"
    assert reply(PROTOBUF.ping) == pb.Reply()
    assert reply(PROTOBUF_UNI.ping, pb.Push) == pb.Push()
    assert PROTOBUF.separator == b""


def test_empty_command_is_a_pong():
    (cmd,) = PROTOBUF.decode_commands(b"\x00")
    assert (cmd.id, cmd.method, cmd.params) == (0, "", {})


def test_several_commands_per_frame():
    frame = delimited(
        pb.Command(id=1, connect=pb.ConnectRequest(token="t")),
        pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="a")),
        b"",  # a pong between them
        pb.Command(id=3, ping=pb.PingRequest()),
    )
    cmds = PROTOBUF.decode_commands(frame)
    assert [(c.id, c.method, c.params) for c in cmds] == [
        (1, "connect", {"token": "t"}),
        (2, "subscribe", {"channel": "a"}),
        (0, "", {}),
        (3, "ping", {}),
    ]


def test_message_longer_than_127_bytes_uses_multibyte_length():
    data = b'{"x":"' + b"y" * 20000 + b'"}'
    frame = delimited(pb.Command(id=7, publish=pb.PublishRequest(channel="c", data=data)))
    assert frame[0] & 0x80 and frame[1] & 0x80  # three-byte length prefix
    (cmd,) = PROTOBUF.decode_commands(frame)
    assert cmd.params == {"channel": "c", "data": data}


def test_first_request_field_wins():
    cmd = pb.Command(
        id=3,
        publish=pb.PublishRequest(channel="x", data=b"1"),
        subscribe=pb.SubscribeRequest(channel="y"),
    )
    (decoded,) = PROTOBUF.decode_commands(delimited(cmd))
    assert (decoded.method, decoded.params) == ("subscribe", {"channel": "y"})


def test_frames_accept_memoryview_slices_of_larger_buffers():
    frame = delimited(pb.Command(id=1, presence=pb.PresenceRequest(channel="p")))
    (cmd,) = PROTOBUF.decode_commands(bytes(frame))
    assert cmd.params == {"channel": "p"}


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty-frame"),
        pytest.param(b"\x80", id="truncated-varint"),
        pytest.param(b"\x02\x08\x01\xff", id="truncated-varint-after-message"),
        pytest.param(b"\xff" * 11, id="varint-too-long"),
        pytest.param(b"\x05\x08\x01", id="message-longer-than-frame"),
        pytest.param(b"\x02\xff\xff", id="garbage-tag"),
        pytest.param(b"\x03\x22\x05\x0a", id="truncated-submessage"),
        pytest.param(b'{"id":1,"connect":{}}', id="json-text"),
        pytest.param(b"\x02\x08\x01\x03\x0b\x00\x00", id="valid-then-garbage"),
    ],
)
def test_malformed_frames_raise(frame):
    with pytest.raises(proto.DecodeError):
        PROTOBUF.decode_commands(frame)


def test_message_size_limit():
    codec = ProtobufCodec(max_message_size=10)
    small = delimited(pb.Command(id=1, presence=pb.PresenceRequest(channel="a")))
    big = delimited(pb.Command(id=1, presence=pb.PresenceRequest(channel="a" * 20)))
    assert codec.decode_commands(small)[0].method == "presence"
    with pytest.raises(proto.DecodeError, match="limit"):
        codec.decode_commands(big)
    # The declared length alone is enough to refuse, before the body arrives.
    with pytest.raises(proto.DecodeError, match="limit"):
        codec.decode_commands(varint(1 << 40))


def test_huge_declared_length_without_limit_is_refused_not_allocated():
    with pytest.raises(proto.DecodeError):
        PROTOBUF.decode_commands(varint(1 << 62) + b"\x08\x01")


# ----------------------------------------------------------------------------- commands

# Each command as Protobuf and as the JSON a JSON client would send: both must give the same
# params (bytes fields aside, which are covered separately below).
SAME_AS_JSON = [
    (
        pb.Command(
            id=1,
            connect=pb.ConnectRequest(
                token="tok",
                name="js",
                version="5.0",
                subs={"news": pb.SubscribeRequest(recover=True, offset=5, epoch="ep")},
                headers={"a": "b"},
            ),
        ),
        b'{"id":1,"connect":{"token":"tok","name":"js","version":"5.0",'
        b'"subs":{"news":{"recover":true,"offset":5,"epoch":"ep"}},"headers":{"a":"b"}}}',
    ),
    (
        pb.Command(
            id=2,
            subscribe=pb.SubscribeRequest(
                channel="chat:1",
                token="st",
                recover=True,
                epoch="e",
                offset=9,
                positioned=True,
                recoverable=True,
                join_leave=True,
                delta="fossil",
                tf=pb.FilterNode(op="and", nodes=[pb.FilterNode(key="k", cmp="eq", val="v")]),
            ),
        ),
        b'{"id":2,"subscribe":{"channel":"chat:1","token":"st","recover":true,"epoch":"e",'
        b'"offset":9,"positioned":true,"recoverable":true,"join_leave":true,"delta":"fossil",'
        b'"tf":{"op":"and","nodes":[{"key":"k","cmp":"eq","val":"v"}]}}}',
    ),
    (
        pb.Command(id=3, unsubscribe=pb.UnsubscribeRequest(channel="c")),
        b'{"id":3,"unsubscribe":{"channel":"c"}}',
    ),
    (
        pb.Command(id=4, presence=pb.PresenceRequest(channel="c")),
        b'{"id":4,"presence":{"channel":"c"}}',
    ),
    (
        pb.Command(id=5, presence_stats=pb.PresenceStatsRequest(channel="c")),
        b'{"id":5,"presence_stats":{"channel":"c"}}',
    ),
    (
        pb.Command(
            id=6,
            history=pb.HistoryRequest(
                channel="c", limit=-1, since=pb.StreamPosition(offset=3, epoch="e"), reverse=True
            ),
        ),
        b'{"id":6,"history":{"channel":"c","limit":-1,"since":{"offset":3,"epoch":"e"},'
        b'"reverse":true}}',
    ),
    (
        # `since` present but zero: still a (empty) dict, like {"since":{}} in JSON.
        pb.Command(id=7, history=pb.HistoryRequest(channel="c", since=pb.StreamPosition())),
        b'{"id":7,"history":{"channel":"c","since":{}}}',
    ),
    (pb.Command(id=8, ping=pb.PingRequest()), b'{"id":8,"ping":{}}'),
    (
        pb.Command(id=9, refresh=pb.RefreshRequest(token="t2")),
        b'{"id":9,"refresh":{"token":"t2"}}',
    ),
    (
        pb.Command(id=10, sub_refresh=pb.SubRefreshRequest(channel="c", token="t3")),
        b'{"id":10,"sub_refresh":{"channel":"c","token":"t3"}}',
    ),
    (
        pb.Command(id=11, rpc=pb.RPCRequest(method="m")),
        b'{"id":11,"rpc":{"method":"m"}}',
    ),
    (pb.Command(id=0, send=pb.SendRequest()), b'{"send":{}}'),
    (pb.Command(id=12), b'{"id":12}'),
]


@pytest.mark.parametrize(
    "pcmd,jframe", SAME_AS_JSON, ids=[j[:30].decode() for _, j in SAME_AS_JSON]
)
def test_commands_decode_like_json(pcmd, jframe):
    (got,) = PROTOBUF.decode_commands(delimited(pcmd))
    (want,) = JSON.decode_commands(jframe)
    assert (got.id, got.method, got.params) == (want.id, want.method, want.params)


def test_every_request_field_maps_to_a_method():
    names = [f.name for f in pb.Command.DESCRIPTOR.fields if f.number >= 4]
    assert tuple(names) == proto.METHODS


@pytest.mark.parametrize(
    "cmd,field",
    [
        (pb.Command(id=1, connect=pb.ConnectRequest(data=b'{"a":1}')), "data"),
        (pb.Command(id=1, subscribe=pb.SubscribeRequest(channel="c", data=b"\x00\xff")), "data"),
        (pb.Command(id=1, publish=pb.PublishRequest(channel="c", data=b"\x01\x02")), "data"),
        (pb.Command(id=1, rpc=pb.RPCRequest(method="m", data=b"[1]")), "data"),
        (pb.Command(id=1, send=pb.SendRequest(data=b"bin\x00")), "data"),
    ],
)
def test_bytes_fields_stay_bytes(cmd, field):
    (got,) = PROTOBUF.decode_commands(delimited(cmd))
    raw = getattr(getattr(cmd, got.method), field)
    assert got.params[field] == raw and type(got.params[field]) is bytes
    assert proto.get_raw(got.params, field) == raw


def test_typed_getters_accept_protobuf_values():
    cmd = pb.Command(
        id=1,
        subscribe=pb.SubscribeRequest(channel="c", offset=2**63 + 5, recover=True, epoch="x"),
    )
    (got,) = PROTOBUF.decode_commands(delimited(cmd))
    assert proto.get_int(got.params, "offset") == 2**63 + 5
    assert proto.get_bool(got.params, "recover") is True
    assert proto.get_str(got.params, "epoch") == "x"
    assert proto.get_bool(got.params, "positioned") is False  # unset: absent


# ----------------------------------------------------------------------------- replies

INFO = ClientInfo(user="u1", client="c1", conn_info=b'{"n":1}', chan_info=b"\x00bin")
PUB = Publication(
    data=b'{"text":"hi"}', info=INFO, offset=42, tags={"k": "v", "z": "ü"}, time=1700000000123
)


def pb_info(info: ClientInfo):
    return pb.ClientInfo(
        user=info.user,
        client=info.client,
        conn_info=info.conn_info or b"",
        chan_info=info.chan_info or b"",
    )


def pb_pub(p: Publication):
    out = pb.Publication(data=p.data, offset=p.offset, tags=p.tags or {}, time=p.time)
    if p.info is not None:
        out.info.CopyFrom(pb_info(p.info))
    out.delta = p.delta
    return out


def test_connect_reply_with_subs():
    sub_result = {
        "recoverable": True,
        "positioned": True,
        "epoch": "ep",
        "offset": 44,
        "recovered": True,
        "was_recovering": True,
        "publications": [PUB, Publication(data=b"2", offset=43)],
    }
    result = {
        "client": "cid",
        "version": "6.0.0 py",
        "expires": True,
        "ttl": 3600,
        "ping": 25,
        "pong": True,
        "session": "s",
        "node": "n",
        "time": 1700000000000,
        "data": b'{"welcome":1}',
        "subs": {"news": sub_result, "empty": {}},
    }
    r = reply(PROTOBUF.encode_reply(5, "connect", result))
    want = pb.Reply(
        id=5,
        connect=pb.ConnectResult(
            client="cid",
            version="6.0.0 py",
            expires=True,
            ttl=3600,
            ping=25,
            pong=True,
            session="s",
            node="n",
            time=1700000000000,
            data=b'{"welcome":1}',
            subs={
                "news": pb.SubscribeResult(
                    recoverable=True,
                    positioned=True,
                    epoch="ep",
                    offset=44,
                    recovered=True,
                    was_recovering=True,
                    publications=[pb_pub(PUB), pb.Publication(data=b"2", offset=43)],
                ),
                "empty": pb.SubscribeResult(),
            },
        ),
    )
    assert r == want
    # centrifuge-python's own definitions read the same frame.
    theirs = reply(PROTOBUF.encode_reply(5, "connect", result), sdk_pb.Reply)
    assert theirs.connect.subs["news"].publications[0].info.conn_info == b'{"n":1}'
    assert theirs.connect.subs["news"].publications[0].tags["z"] == "ü"


@pytest.mark.parametrize(
    "method,result,want",
    [
        ("publish", {}, pb.Reply(id=1, publish=pb.PublishResult())),
        ("unsubscribe", {}, pb.Reply(id=1, unsubscribe=pb.UnsubscribeResult())),
        ("rpc", {}, pb.Reply(id=1, rpc=pb.RPCResult())),
        ("rpc", {"data": b"\x01\x02"}, pb.Reply(id=1, rpc=pb.RPCResult(data=b"\x01\x02"))),
        (
            "subscribe",
            {"expires": True, "ttl": 10, "data": b"d", "positioned": True, "epoch": "e"},
            pb.Reply(
                id=1,
                subscribe=pb.SubscribeResult(
                    expires=True, ttl=10, data=b"d", positioned=True, epoch="e"
                ),
            ),
        ),
        (
            "presence",
            {"presence": {"c1": INFO, "c2": ClientInfo("", "c2")}},
            pb.Reply(
                id=1,
                presence=pb.PresenceResult(
                    presence={"c1": pb_info(INFO), "c2": pb.ClientInfo(client="c2")}
                ),
            ),
        ),
        (
            "presence_stats",
            {"num_clients": 3, "num_users": 2},
            pb.Reply(id=1, presence_stats=pb.PresenceStatsResult(num_clients=3, num_users=2)),
        ),
        (
            "history",
            {"publications": [PUB], "epoch": "e", "offset": 42},
            pb.Reply(
                id=1, history=pb.HistoryResult(publications=[pb_pub(PUB)], epoch="e", offset=42)
            ),
        ),
        (
            "history",
            {"publications": [], "epoch": "e", "offset": 0},
            pb.Reply(id=1, history=pb.HistoryResult(epoch="e")),
        ),
        (
            "refresh",
            {"client": "c", "version": "v", "expires": True, "ttl": 5},
            pb.Reply(id=1, refresh=pb.RefreshResult(client="c", version="v", expires=True, ttl=5)),
        ),
        (
            "sub_refresh",
            {"expires": True, "ttl": 7},
            pb.Reply(id=1, sub_refresh=pb.SubRefreshResult(expires=True, ttl=7)),
        ),
    ],
)
def test_replies(method, result, want):
    frame = PROTOBUF.encode_reply(1, method, result)
    got = reply(frame)
    assert got == want
    assert got.HasField(method)  # an empty result is still on the wire
    assert PROTOBUF_UNI.encode_reply(1, method, result) == frame


def test_error_reply():
    r = reply(PROTOBUF.encode_error(9, {"code": 100, "message": "internal", "temporary": True}))
    assert r == pb.Reply(id=9, error=pb.Error(code=100, message="internal", temporary=True))
    r = reply(PROTOBUF.encode_error(9, {"code": 103, "message": "permission denied"}))
    assert (r.error.code, r.error.message, r.error.temporary) == (103, "permission denied", False)


# ----------------------------------------------------------------------------- pushes

PUSHES = [
    ("pub", PUB, pb.Push(channel="ch", pub=pb_pub(PUB))),
    (
        "join",
        {"info": INFO},
        pb.Push(channel="ch", join=pb.Join(info=pb_info(INFO))),
    ),
    (
        "leave",
        {"info": INFO},
        pb.Push(channel="ch", leave=pb.Leave(info=pb_info(INFO))),
    ),
    (
        "unsubscribe",
        {"code": 2500, "reason": "insufficient state"},
        pb.Push(channel="ch", unsubscribe=pb.Unsubscribe(code=2500, reason="insufficient state")),
    ),
    ("message", {"data": b"\x00m"}, pb.Push(channel="ch", message=pb.Message(data=b"\x00m"))),
    (
        "subscribe",
        {"recoverable": True, "epoch": "e", "offset": 3, "positioned": True, "data": b"x"},
        pb.Push(
            channel="ch",
            subscribe=pb.Subscribe(
                recoverable=True, epoch="e", offset=3, positioned=True, data=b"x"
            ),
        ),
    ),
    (
        "refresh",
        {"expires": True, "ttl": 30},
        pb.Push(channel="ch", refresh=pb.Refresh(expires=True, ttl=30)),
    ),
]


@pytest.mark.parametrize("kind,body,want", PUSHES, ids=[p[0] for p in PUSHES])
def test_pushes_wrapped_and_bare(kind, body, want):
    wrapped = reply(PROTOBUF.encode_push("ch", kind, body))
    assert wrapped == pb.Reply(push=want)
    assert reply(PROTOBUF_UNI.encode_push("ch", kind, body), pb.Push) == want
    theirs = reply(PROTOBUF.encode_push("ch", kind, body), sdk_pb.Reply)
    assert theirs.push.channel == "ch" and theirs.push.HasField(kind)


def test_connection_level_pushes_have_no_channel():
    frame = PROTOBUF_UNI.encode_push(
        "", "connect", {"client": "c", "version": "v", "ping": 25, "subs": {"a": {"epoch": "e"}}}
    )
    assert reply(frame, pb.Push) == pb.Push(
        connect=pb.Connect(
            client="c", version="v", ping=25, subs={"a": pb.SubscribeResult(epoch="e")}
        )
    )
    frame = PROTOBUF.encode_push("", "disconnect", {"code": 3001, "reason": "shutdown"})
    assert reply(frame) == pb.Reply(
        push=pb.Push(disconnect=pb.Disconnect(code=3001, reason="shutdown"))
    )


@pytest.mark.parametrize(
    "pub",
    [
        PUB,
        Publication(data=b"\x00\x01binary"),
        Publication(data=b""),
        Publication(data=b"x" * 300, offset=2**40, delta=True),
        Publication(data=b"1", info=ClientInfo("", "")),
        Publication(data=b"1", time=-5),
    ],
)
def test_pub_push_is_what_generated_code_writes(pub):
    want = pb.Reply(push=pb.Push(channel="news:ü", pub=pb_pub(pub)))
    frame = PROTOBUF.encode_pub_push("news:ü", pub)
    assert reply(frame) == want
    assert frame == delimited(want)  # byte-identical to the generated serializer
    bare = PROTOBUF_UNI.encode_pub_push("news:ü", pub)
    assert bare == delimited(want.push)
    # encode_push with a Publication body takes the same route.
    assert PROTOBUF.encode_push("news:ü", "pub", pub) == frame


def test_join_leave_pushes_keep_empty_info_present():
    info = ClientInfo("", "")
    j = reply(PROTOBUF.encode_join_push("c", info))
    assert j.push.HasField("join") and j.push.join.HasField("info")
    leave = reply(PROTOBUF_UNI.encode_leave_push("c", INFO), pb.Push)
    assert leave == pb.Push(channel="c", leave=pb.Leave(info=pb_info(INFO)))
    assert PROTOBUF.encode_join_push("c", INFO) == PROTOBUF.encode_push("c", "join", {"info": INFO})


def test_frames_are_cached_per_codec_name():
    calls = []
    pub = Publication(data=b'{"a":1}', offset=42)

    def build(codec):
        calls.append(codec.name)
        return codec.encode_pub_push("c", pub)

    frames = Frames(build)
    a = frames.get(PROTOBUF)
    assert frames.get(ProtobufCodec()) is a  # same name: same frame, built once
    b = frames.get(PROTOBUF_UNI)
    j = frames.get(JSON)
    assert calls == ["protobuf", "protobuf_uni", "json"]
    assert a != b and orjson.loads(j)["push"]["pub"]["offset"] == 42


def test_binary_payload_travels_over_protobuf_but_not_json():
    pub = Publication(data=b"\xff\xfe", offset=1)
    assert JSON.encode_pub_push("c", pub) == b""
    assert reply(PROTOBUF.encode_pub_push("c", pub)).push.pub.data == b"\xff\xfe"


def test_writer_style_concatenation_splits_back():
    frame = PROTOBUF.separator.join(
        [
            PROTOBUF.encode_reply(1, "publish", {}),
            PROTOBUF.encode_pub_push("c", PUB),
            PROTOBUF.ping,
            PROTOBUF.encode_error(2, {"code": 108, "message": "not available"}),
        ]
    )
    replies = [pb.Reply.FromString(m) for m in split(frame)]
    assert [r.id for r in replies] == [1, 0, 0, 2]
    assert replies[1].push.pub.offset == 42 and replies[2] == pb.Reply()
    assert replies[3].error.code == 108


def test_unknown_result_keys_are_skipped_and_bad_values_rejected():
    r = reply(PROTOBUF.encode_reply(1, "publish", {"not_on_the_wire": 1}))
    assert r == pb.Reply(id=1, publish=pb.PublishResult())
    with pytest.raises(TypeError):
        PROTOBUF.encode_push("c", "pub", 123)


# ----------------------------------------------------------------------------- schema


def test_generated_module_matches_proto_file(tmp_path):
    """app/protocol/gen is regenerated from proto/client.proto (tools/gen_protos.sh)."""
    from pathlib import Path

    from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
    from grpc_tools import protoc

    proto_dir = Path(__file__).resolve().parents[2] / "proto"
    out = tmp_path / "client.pb"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", "client.proto"])
    assert rc == 0
    (fdp,) = FileDescriptorSet.FromString(out.read_bytes()).file

    def clear_json_names(messages):  # protoc adds them to descriptor sets only
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            clear_json_names(m.nested_type)

    clear_json_names(fdp.message_type)
    generated = FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert fdp == generated
    assert fdp.package == "centrifugal.centrifuge.protocol"


def test_wire_numbers_agree_with_the_sdk_schema():
    """Every message and field centrifuge-python knows has the same number and type here."""
    ours = pb.DESCRIPTOR.message_types_by_name
    checked = 0
    for name, theirs in sdk_pb.DESCRIPTOR.message_types_by_name.items():
        assert name in ours, name
        for f in theirs.fields:
            mine = ours[name].fields_by_name.get(f.name)
            assert mine is not None, f"{name}.{f.name}"
            assert (mine.number, mine.type, mine.is_repeated) == (
                f.number,
                f.type,
                f.is_repeated,
            ), f"{name}.{f.name}"
            checked += 1
    assert checked > 150
