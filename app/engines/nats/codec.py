"""Bytes that travel through NATS: Centrifugo's protobuf `Push` messages (non-raw mode).

Centrifugo's NatsBroker (internal/natsbroker/broker.go) publishes on a channel's subject one
`protocol.Push` (centrifugal/protocol's client.proto, the same message the client protocol
uses) serialized with MarshalVT:
- a publication: `Push{channel, pub: Publication{data, info, tags, delta, time}}`, `time` the
  publish moment in unix ms; a publication with a stream position (centrifuge's
  PublishWithStreamPosition) also has `offset` and its epoch in the tag `__centrifugo_epoch`;
- a join / leave: `Push{channel, join|leave: {info}}`.
Those bytes are exactly what a Centrifugo node on the same NATS sends and expects.

Encoding reuses the client protocol's hand-rolled publication encoder (app/protocol/protobuf.py,
the fan-out hot path); decoding uses the generated message (upb parses in C). On receipt the
epoch tag is stripped (never shown to clients, as Centrifugo does) and `time` is dropped:
centrifuge's pubToProto never puts a publication's time on the client wire (Centrifugo uses it
only for its lag metric, which the Redis engine does not observe here either).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from app.models import ClientInfo, Publication
from app.protocol.gen import client_pb2 as pb
from app.protocol.protobuf import encode_client_info, encode_publication, varint

# centrifugo internal/natsbroker: epochTagsKey.
EPOCH_TAG = "__centrifugo_epoch"

_T_PUSH_CHANNEL = b"\x12"  # Push.channel = 2
_T_PUSH_PUB = b"\x22"  # Push.pub = 4
_T_PUSH_JOIN = b"\x2a"  # Push.join = 5
_T_PUSH_LEAVE = b"\x32"  # Push.leave = 6
_T_JOIN_INFO = b"\x0a"  # Join.info = 1 / Leave.info = 1


class UndecodablePush(ValueError):
    """Bytes on a client subject that are not a Push with a publication, join or leave."""


def _push(channel: str, tag: bytes, body: bytes) -> bytes:
    ch = channel.encode()
    out = _T_PUSH_CHANNEL + varint(len(ch)) + ch if ch else b""
    return out + tag + varint(len(body)) + body


def encode_publication_push(channel: str, pub: Publication) -> bytes:
    """`Push{channel, pub}` as Centrifugo's Publish marshals it."""
    return _push(channel, _T_PUSH_PUB, encode_publication(pub))


def _info_body(info: ClientInfo | None) -> bytes:
    # Centrifugo's infoToProto(nil) leaves Join.info unset; a present info is a field.
    if info is None:
        return b""
    body = encode_client_info(info)
    return _T_JOIN_INFO + varint(len(body)) + body


def encode_join_push(channel: str, info: ClientInfo | None) -> bytes:
    return _push(channel, _T_PUSH_JOIN, _info_body(info))


def encode_leave_push(channel: str, info: ClientInfo | None) -> bytes:
    return _push(channel, _T_PUSH_LEAVE, _info_body(info))


@dataclass(slots=True)
class Decoded:
    """One message from a client subject: what it is and for which channel (`Push.channel`)."""

    kind: str  # "pub" | "join" | "leave"
    channel: str
    pub: Publication | None = None
    epoch: str = ""
    info: ClientInfo | None = None


# A join/leave without info (never sent by Centrifugo, which always has the client's).
_NO_INFO = ClientInfo("", "")


def _info(m: pb.ClientInfo) -> ClientInfo:
    return ClientInfo(m.user, m.client, m.conn_info or None, m.chan_info or None)


def decode_push(data: bytes) -> Decoded:
    """A Push from NATS; raises UndecodablePush for anything else."""
    try:
        push = pb.Push.FromString(data)
    except DecodeError as e:
        raise UndecodablePush(str(e)) from None
    if push.HasField("pub"):
        m = push.pub
        tags = dict(m.tags) if m.tags else None
        epoch = ""
        if tags is not None:
            # centrifugo: the position counts only with an offset; the tag goes either way.
            tag_epoch = tags.pop(EPOCH_TAG, "")
            if m.offset > 0:
                epoch = tag_epoch
            if not tags:
                tags = None
        info = _info(m.info) if m.HasField("info") else None
        pub = Publication(m.data, info, m.offset, tags, 0, m.delta)
        return Decoded("pub", push.channel, pub, epoch)
    if push.HasField("join"):
        j = push.join
        return Decoded("join", push.channel, info=_info(j.info) if j.HasField("info") else _NO_INFO)
    if push.HasField("leave"):
        lv = push.leave
        return Decoded(
            "leave", push.channel, info=_info(lv.info) if lv.HasField("info") else _NO_INFO
        )
    raise UndecodablePush("push without pub, join or leave")
