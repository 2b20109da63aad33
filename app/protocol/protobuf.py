"""Client protocol v2, Protobuf flavour (WebSocket sub-protocol `centrifuge-protobuf`).

Wire rules (centrifugal/protocol): every Command and every Reply is prefixed with
its length as a varint, and a frame is a plain concatenation of such messages
(separator b""). A server ping is an empty Reply, i.e. the single byte 0x00; the
client's pong is an empty Command. `bytes` fields carry payloads unchanged, so
binary publications travel as they are.

Commands are decoded with the generated classes and turned into the same
params dicts the JSON codec produces (snake_case keys, only fields that are set,
nested messages as dicts, `bytes` values for bytes fields), so app/client.py
does not know which protocol it speaks. Replies and pushes are built from the
protocol-neutral result dicts. The per-publication push (and join/leave) is
written by hand: it is encoded once per publication per protocol, and direct
byte assembly is cheaper than building message objects.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message

from app.models import ClientInfo, Publication
from app.protocol import Command, DecodeError
from app.protocol.gen import client_pb2 as pb

_MAX_VARINT_BYTES = 10
_SMALL = [bytes((i,)) for i in range(128)]

# Command field numbers 4..15 are the requests, in the order the server looks for them
# (the same order as app.protocol.METHODS); ListFields() returns them by number.
_FIRST_REQUEST_FIELD = 4


def varint(n: int) -> bytes:
    """Unsigned LEB128, as protobuf writes lengths and (u)int64 values."""
    if 0 <= n < 128:
        return _SMALL[n]
    if 0 < n < 16384:
        # Two bytes (a publication's length, an offset below 16384) without the loop:
        # 1.5k fewer instructions a call (valgrind: a publication push with such an offset,
        # 13.8k -> 12.3k).
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64: ten bytes of two's complement
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(body: bytes) -> bytes:
    return varint(len(body)) + body


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    return tag + varint(len(body)) + body


# --------------------------------------------------------------- decoding


def read_varint_prefix(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos`: (value, position after it), or (0, -1) when the bytes stop
    inside it (a stream reader waits for more: app/transports/webtransport/framing.py);
    DecodeError when it runs past ten bytes."""
    result = 0
    shift = 0
    for i in range(pos, min(end, pos + _MAX_VARINT_BYTES)):
        b = buf[i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i + 1
        shift += 7
    if end - pos >= _MAX_VARINT_BYTES:
        raise DecodeError("varint too long")
    return 0, -1


def _read_varint(frame: bytes, pos: int, end: int) -> tuple[int, int]:
    value, after = read_varint_prefix(frame, pos, end)
    if after < 0:
        raise DecodeError("truncated varint")
    return value, after


class _Kind:
    SCALAR = 0
    MESSAGE = 1
    REPEATED_SCALAR = 2
    REPEATED_MESSAGE = 3
    MAP_SCALAR = 4
    MAP_MESSAGE = 5


_KINDS: dict[Any, int] = {}  # FieldDescriptor -> _Kind, filled lazily


def _kind(fd: Any) -> int:
    k = _KINDS.get(fd)
    if k is None:
        if fd.type == fd.TYPE_MESSAGE:
            mt = fd.message_type
            if mt.GetOptions().map_entry:
                vt = mt.fields_by_name["value"]
                k = _Kind.MAP_MESSAGE if vt.type == vt.TYPE_MESSAGE else _Kind.MAP_SCALAR
            elif fd.is_repeated:
                k = _Kind.REPEATED_MESSAGE
            else:
                k = _Kind.MESSAGE
        else:
            k = _Kind.REPEATED_SCALAR if fd.is_repeated else _Kind.SCALAR
        _KINDS[fd] = k
    return k


def message_to_params(msg: Message) -> dict[str, Any]:
    """Set fields of a request message as a JSON-shaped dict (bytes stay bytes)."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        k = _kind(fd)
        if k == _Kind.SCALAR:
            out[fd.name] = value
        elif k == _Kind.MESSAGE:
            out[fd.name] = message_to_params(value)
        elif k == _Kind.MAP_MESSAGE:
            out[fd.name] = {key: message_to_params(v) for key, v in value.items()}
        elif k == _Kind.MAP_SCALAR:
            out[fd.name] = dict(value)
        elif k == _Kind.REPEATED_MESSAGE:
            out[fd.name] = [message_to_params(v) for v in value]
        else:
            out[fd.name] = list(value)
    return out


def _to_command(cmd: pb.Command) -> Command:
    for fd, value in cmd.ListFields():
        if fd.number >= _FIRST_REQUEST_FIELD:
            return Command(cmd.id, fd.name, message_to_params(value))
    return Command(cmd.id, "", {})


# --------------------------------------------------------------- encoding
#
# Hand-written encoders for the fan-out messages. Tags are (field_number << 3 | wire_type).

_T_INFO_USER = b"\x0a"  # ClientInfo.user = 1
_T_INFO_CLIENT = b"\x12"  # ClientInfo.client = 2
_T_INFO_CONN = b"\x1a"  # ClientInfo.conn_info = 3
_T_INFO_CHAN = b"\x22"  # ClientInfo.chan_info = 4
_T_PUB_DATA = b"\x22"  # Publication.data = 4
_T_PUB_INFO = b"\x2a"  # Publication.info = 5
_T_PUB_OFFSET = b"\x30"  # Publication.offset = 6 (varint)
_T_PUB_TAGS = b"\x3a"  # Publication.tags = 7 (map entries)
_T_PUB_DELTA = b"\x40\x01"  # Publication.delta = 8 true
_T_PUB_TIME = b"\x48"  # Publication.time = 9 (varint)
_T_PUB_CHANNEL = b"\x52"  # Publication.channel = 10 (NATS wildcard / raw mode)
_T_PUB_KEY = b"\x5a"  # Publication.key = 11 (map channels)
_T_PUB_REMOVED = b"\x60\x01"  # Publication.removed = 12 true
_T_MAP_KEY = b"\x0a"
_T_MAP_VALUE = b"\x12"
_T_JOIN_INFO = b"\x0a"  # Join.info = 1 / Leave.info = 1
_T_PUSH_CHANNEL = b"\x12"  # Push.channel = 2
_T_PUSH_PUB = b"\x22"  # Push.pub = 4
_T_PUSH_JOIN = b"\x2a"  # Push.join = 5
_T_PUSH_LEAVE = b"\x32"  # Push.leave = 6
_T_REPLY_PUSH = b"\x22"  # Reply.push = 4


def encode_client_info(info: ClientInfo) -> bytes:
    parts = []
    if info.user:
        parts.append(_field(_T_INFO_USER, info.user.encode()))
    if info.client:
        parts.append(_field(_T_INFO_CLIENT, info.client.encode()))
    if info.conn_info:
        parts.append(_field(_T_INFO_CONN, info.conn_info))
    if info.chan_info:
        parts.append(_field(_T_INFO_CHAN, info.chan_info))
    return b"".join(parts)


def encode_publication(pub: Publication) -> bytes:
    """Publication message body (no length prefix). Flat on purpose: hot path."""
    data = pub.data
    n = len(data)
    out = (_T_PUB_DATA + (_SMALL[n] if n < 128 else varint(n)) + data) if n else b""
    info = pub.info
    if info is not None:
        ib = encode_client_info(info)
        out += _T_PUB_INFO + varint(len(ib)) + ib
    if pub.offset:
        out += _T_PUB_OFFSET + varint(pub.offset)
    if pub.tags:
        for key, value in pub.tags.items():
            kb = key.encode()
            vb = value.encode()
            entry = _T_MAP_KEY + varint(len(kb)) + kb + _T_MAP_VALUE + varint(len(vb)) + vb
            out += _T_PUB_TAGS + varint(len(entry)) + entry
    if pub.delta:
        out += _T_PUB_DELTA
    if pub.time:
        out += _T_PUB_TIME + varint(pub.time)
    if pub.channel:
        cb = pub.channel.encode()
        out += _T_PUB_CHANNEL + varint(len(cb)) + cb
    if pub.key:
        kb = pub.key.encode()
        out += _T_PUB_KEY + varint(len(kb)) + kb
        if pub.removed:
            out += _T_PUB_REMOVED
    return out


def _fill(msg: Message, values: dict[str, Any]) -> None:
    """Copy a protocol-neutral result dict into a generated message."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if value is None:
            continue
        fd = fields.get(key)
        if fd is None:
            continue  # nothing on the Protobuf wire for it
        k = _kind(fd)
        if k == _Kind.SCALAR:
            setattr(msg, key, value)
        elif k == _Kind.MESSAGE:
            _fill_any(getattr(msg, key), value)
        elif k == _Kind.MAP_MESSAGE:
            container = getattr(msg, key)
            for mk, mv in value.items():
                _fill_any(container[mk], mv)
        elif k == _Kind.MAP_SCALAR:
            getattr(msg, key).update(value)
        elif k == _Kind.REPEATED_MESSAGE:
            container = getattr(msg, key)
            for item in value:
                _fill_any(container.add(), item)
        else:
            getattr(msg, key).extend(value)


def _fill_any(msg: Message, value: Any) -> None:
    t = type(value)
    if t is Publication or t is ClientInfo:
        # Same bytes as the hand-written fan-out encoders, parsed into the message.
        body = encode_publication(value) if t is Publication else encode_client_info(value)
        msg.MergeFromString(body)
        msg.SetInParent()
    elif isinstance(value, dict):
        msg.SetInParent()  # an empty result is still present on the wire
        _fill(msg, value)
    else:
        raise TypeError(f"cannot encode {t.__name__} as {msg.DESCRIPTOR.name}")


class ProtobufCodec:
    """bare=False: pushes wrapped in a Reply (bidirectional transports);
    bare=True: bare Push messages, still varint-delimited (unidirectional transports)."""

    separator = b""
    ping = b"\x00"  # an empty Reply (or empty Push), length-prefixed

    def __init__(self, bare: bool = False, max_message_size: int = 0) -> None:
        self.bare = bare
        self.name = "protobuf_uni" if bare else "protobuf"
        # 0: a message is only bounded by the frame it arrives in (the transport
        # already enforces its own size limit on frames).
        self.max_message_size = max_message_size
        # A publication push's Push.channel field and Push.pub tag, by channel (bounded,
        # cleared when full): encode_pub_push joins the framing around it once.
        self._pub_heads: dict[str, bytes] = {}

    # ---- incoming

    def decode_commands(self, frame: bytes) -> list[Command]:
        end = len(frame)
        if not end:
            raise DecodeError("empty frame")
        out: list[Command] = []
        pos = 0
        limit = self.max_message_size
        parse = pb.Command.FromString
        view = memoryview(frame)
        while pos < end:
            b = frame[pos]
            if b < 0x80:
                length, pos = b, pos + 1
            else:
                length, pos = _read_varint(frame, pos, end)
            if limit and length > limit:
                raise DecodeError(f"message of {length} bytes over the {limit} limit")
            stop = pos + length
            if stop > end:
                raise DecodeError("message longer than the frame")
            try:
                cmd = parse(view[pos:stop])
            except _PbDecodeError as e:
                raise DecodeError(f"invalid Command: {e}") from e
            out.append(_to_command(cmd))
            pos = stop
        return out

    # ---- outgoing

    def encode_reply(self, cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
        reply = pb.Reply(id=cmd_id)
        _fill_any(getattr(reply, method), result)
        return _delimited(reply.SerializeToString())

    def encode_error(self, cmd_id: int, error: dict[str, Any]) -> bytes:
        reply = pb.Reply(id=cmd_id)
        _fill_any(reply.error, error)
        return _delimited(reply.SerializeToString())

    def encode_push(self, channel: str, kind: str, body: Any) -> bytes:
        if kind == "pub" and type(body) is Publication:
            return self._channel_push(channel, _T_PUSH_PUB, encode_publication(body))
        push = pb.Push(channel=channel)
        _fill_any(getattr(push, kind), body)
        return self._wrap_push(push.SerializeToString())

    def _wrap_push(self, push: bytes) -> bytes:
        if self.bare:
            return _delimited(push)
        return _delimited(_field(_T_REPLY_PUSH, push))

    def _channel_push(self, channel: str, tag: bytes, body: bytes) -> bytes:
        push = tag + varint(len(body)) + body
        if channel:
            ch = channel.encode()
            push = _T_PUSH_CHANNEL + varint(len(ch)) + ch + push
        if not self.bare:
            push = _T_REPLY_PUSH + varint(len(push)) + push
        return varint(len(push)) + push

    def encode_pub_push(self, channel: str, pub: Publication) -> bytes:
        # _channel_push's bytes, with the channel's part cached and one join instead of a
        # concatenation (a copy of the data) per level of framing: 13.0k -> 9.4k
        # instructions a push of 100 bytes without offset (valgrind, /tmp harness).
        body = encode_publication(pub)
        head = self._pub_heads.get(channel)
        if head is None:
            head = self._pub_head(channel)
        n = len(body)
        body_len = _SMALL[n] if n < 128 else varint(n)
        push_len = len(head) + len(body_len) + n
        if self.bare:
            return b"".join((varint(push_len), head, body_len, body))
        push_len_bytes = varint(push_len)
        reply_len = len(_T_REPLY_PUSH) + len(push_len_bytes) + push_len
        return b"".join((varint(reply_len), _T_REPLY_PUSH, push_len_bytes, head, body_len, body))

    def _pub_head(self, channel: str) -> bytes:
        head = _field(_T_PUSH_CHANNEL, channel.encode()) + _T_PUSH_PUB if channel else _T_PUSH_PUB
        heads = self._pub_heads
        if len(heads) >= 16384:
            heads.clear()
        heads[channel] = head
        return head

    def encode_join_push(self, channel: str, info: ClientInfo) -> bytes:
        body = _field(_T_JOIN_INFO, encode_client_info(info))
        return self._channel_push(channel, _T_PUSH_JOIN, body)

    def encode_leave_push(self, channel: str, info: ClientInfo) -> bytes:
        body = _field(_T_JOIN_INFO, encode_client_info(info))
        return self._channel_push(channel, _T_PUSH_LEAVE, body)


PROTOBUF = ProtobufCodec()
PROTOBUF_UNI = ProtobufCodec(bare=True)
