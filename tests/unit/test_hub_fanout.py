"""The fan-out's shortcuts keep their results: the one-subscriber path delivers like the
loop (and survives the delivery unsubscribing), frames are built once per protocol, and the
JSON and Protobuf publication pushes are the bytes the general encoders write."""

from __future__ import annotations

import orjson

from app.filter import Matcher
from app.hub import Frames, Hub, PublicationFrames
from app.models import ClientInfo, Publication
from app.protocol.json import JSON, JSON_UNI
from app.protocol.protobuf import PROTOBUF, PROTOBUF_UNI, encode_publication, varint

# The fuzz strategies' loop encoder: an oracle independent of protobuf.varint's branches.
from tests.fuzz.strategies import varint as _varint_by_loop


class _Recorder:
    """A HubClient recording its deliveries; `unsubscribe` drops itself on delivery, as
    insufficient state does."""

    def __init__(self, hub: Hub, uid: str, unsubscribe: bool = False) -> None:
        self.uid = self.user = uid
        self.session = ""
        self.hub = hub
        self.unsubscribe = unsubscribe
        self.got: list[bytes] = []

    def tags_filter(self, channel: str) -> Matcher | None:
        return None

    def delta_subscription(self, channel: str) -> bool:
        return False

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: object
    ) -> None:
        assert isinstance(frames, Frames)
        self.got.append(frames.get(JSON))
        if self.unsubscribe:
            self.hub.remove_subscriber(channel, self)

    def deliver_join_leave(self, channel: str, frames: Frames) -> None:
        pass


def test_one_subscriber_gets_the_frame_and_may_unsubscribe_on_delivery() -> None:
    hub = Hub()
    alone = _Recorder(hub, "a", unsubscribe=True)
    hub.add_subscriber("c", alone)
    hub.broadcast_publication("c", Publication(b"1", offset=3), "e")
    assert alone.got == [b'{"push":{"channel":"c","pub":{"data":1,"offset":3}}}']
    assert not hub.has_subscribers("c")
    hub.broadcast_publication("c", Publication(b"2"), "e")  # nobody left: nothing
    assert len(alone.got) == 1
    # A publication that allows delta goes without the flag to plain subscribers.
    hub.add_subscriber("c", alone)
    hub.broadcast_publication("c", Publication(b"3", delta=True), "e")
    assert alone.got[-1] == b'{"push":{"channel":"c","pub":{"data":3}}}'


def test_publication_frames_encode_once_per_protocol() -> None:
    frames = PublicationFrames("c", Publication(b'{"a":1}', offset=2))
    j = frames.get(JSON)
    assert frames.get(JSON) is j
    p = frames.get(PROTOBUF)
    assert frames.get(PROTOBUF) is p and p != j
    u = frames.get(JSON_UNI)
    assert frames.get(JSON_UNI) is u and frames.get(JSON) is j
    assert orjson.loads(u) == {"channel": "c", "pub": {"data": {"a": 1}, "offset": 2}}


def test_json_publication_push_is_what_orjson_writes() -> None:
    for channel in ("c", 'q"uote', "ns:ü"):
        for offset in (0, 9):
            pub = Publication(b'{"a":[1,2]}', offset=offset)
            body = {"data": {"a": [1, 2]}, **({"offset": offset} if offset else {})}
            push = {"channel": channel, "pub": body}
            assert JSON.encode_pub_push(channel, pub) == orjson.dumps({"push": push})
            assert JSON.encode_pub_push(channel, pub) == orjson.dumps({"push": push})  # cached
            assert JSON_UNI.encode_pub_push(channel, pub) == orjson.dumps(push)
    assert JSON.encode_pub_push("c", Publication(b"\xff")) == b""


def _framed(bare: bool, channel: str, body: bytes) -> bytes:
    """A Push (in a Reply unless bare) with `channel` and `body` as its pub, delimited."""
    push = b"\x22" + _varint_by_loop(len(body)) + body
    if channel:
        ch = channel.encode()
        push = b"\x12" + _varint_by_loop(len(ch)) + ch + push
    if not bare:
        push = b"\x22" + _varint_by_loop(len(push)) + push
    return _varint_by_loop(len(push)) + push


def test_protobuf_publication_push_is_the_general_framing() -> None:
    info = ClientInfo("u", "c", b"1", None)
    for codec in (PROTOBUF, PROTOBUF_UNI):
        for channel in ("", "c", "x" * 200):
            for n in (0, 100, 127, 128, 20000):
                for pub in (
                    Publication(b"a" * n),
                    Publication(b"b" * n, offset=2**40),
                    Publication(b"c" * n, info, 5, {"t": "v"}, 9, True),
                ):
                    want = _framed(codec.bare, channel, encode_publication(pub))
                    assert codec.encode_pub_push(channel, pub) == want


def test_varint_matches_the_loop() -> None:
    for n in [*range(-300, 20000), 2**40, 2**63, -(2**63)]:
        assert varint(n) == _varint_by_loop(n), n
