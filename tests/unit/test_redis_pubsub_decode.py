"""The PUB/SUB read path's shortcuts keep their results: a bare payload and a history frame
decode as the general path does, PUB/SUB channel names map back to their channels
(cached), and the reader hands every message over even when the handler fails on one."""

from __future__ import annotations

from app.engines.redis import codec
from app.engines.redis.connect import Endpoint
from app.engines.redis.keys import Keys
from app.engines.redis.pubsub import PubSubConnection, _Protocol
from app.models import ClientInfo, Publication


def test_bare_payload_decodes_as_the_general_path() -> None:
    frame = b'\n{"a":1}'
    kind, pub, epoch = codec.decode_frame(frame)
    assert (kind, epoch) == ("pub", "")
    assert pub == Publication(b'{"a":1}')
    assert pub == codec.decode_payload(frame)


def test_history_frame_with_meta_reads_in_place() -> None:
    info = ClientInfo("u", "c", b'{"x":1}', None)
    payload = codec.encode_payload(b'{"a":1}', info, {"t": "v"}, 5, True)
    kind, pub, epoch = codec.decode_frame(b"__p1:42:ep__" + payload)
    assert (kind, epoch) == ("pub", "ep")
    assert isinstance(pub, Publication)
    assert (pub.data, pub.offset, pub.info, pub.tags, pub.time, pub.delta) == (
        b'{"a":1}',
        42,
        info,
        {"t": "v"},
        5,
        True,
    )
    kind, bare, _ = codec.decode_frame(b"__p1:7:ep__\nxyz")
    assert bare == Publication(b"xyz", None, 7)


def test_join_leave_and_meta_payload_still_decode() -> None:
    info = ClientInfo("u", "c", None, None)
    assert codec.decode_frame(codec.JOIN + codec.encode_info(info)) == ("join", info, "")
    assert codec.decode_frame(codec.LEAVE + codec.encode_info(info)) == ("leave", info, "")
    kind, pub, _ = codec.decode_frame(codec.encode_payload(b"d", None, {"k": "v"}, 0, False))
    assert kind == "pub" and pub == Publication(b"d", tags={"k": "v"})


def test_pubsub_names_map_back_to_channels_and_are_cached() -> None:
    for cluster in (False, True):
        keys = Keys("centrifugo", cluster)
        for channel in ("user_1", "ns:chat", "$private"):
            name = keys.client_channel(channel).encode()
            assert keys.channel_from_pubsub(name) == channel
            assert keys.channels_by_pubsub[name] == channel


def _smessage(name: bytes, data: bytes) -> bytes:
    return b"*3\r\n" + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in (b"smessage", name, data))


async def test_messages_go_to_the_handler_and_a_failure_stops_none_after_it() -> None:
    got: list[bytes] = []

    def on_message(name: bytes, data: bytes) -> None:
        got.append(data)
        if data == b"boom":
            raise RuntimeError("handler bug")

    async def nowhere() -> Endpoint:
        raise AssertionError("never connects")

    conn = PubSubConnection(nowhere, on_message, sharded=True)
    proto = _Protocol(conn)
    confirm = b"*3\r\n$10\r\nssubscribe\r\n$1\r\nx\r\n:1\r\n"
    stream = _smessage(b"x", b"a") + confirm + _smessage(b"x", b"boom") + _smessage(b"x", b"c")
    proto.data_received(stream[:10])  # a message split across reads
    proto.data_received(stream[10:])
    assert got == [b"a", b"boom", b"c"]
