"""RFC 6455 framing for the server side: server frames out, client frames in.

Out: unmasked server frames (FIN, opcode, length). The uncompressed data path looks the
header of a short message up rather than packing it, and keeps the last frame of each
opcode (LAST_FRAMED): a fan-out hands the same bytes object to every subscriber's writer,
and one-message frames are flushed back to back, so the frame is built once per
publication, not once per subscriber (inlined in WebSocketTransport.write_now, which runs
once per subscriber). `server_frame` frames with any first byte (RSV1 for deflate),
`close_frame` the close frame of a disconnect, `pong_frame` the answer to a ping.

In: `FrameReader` turns a stream of client bytes into messages and control frames:
masked frames only, fragments reassembled, reserved bits, control frame rules, the
message size limit (1009) and UTF-8 of text and close reasons checked; whatever breaks the
protocol raises `ProtocolError` with its close code (1002, 1007, 1009). With
permessage-deflate negotiated (an `Inflater`), a message whose first frame has RSV1 set
is inflated once whole (RFC 7692 §6.2; RSV1 on a control frame is ignored, as aiohttp
does for clients that set it). It holds no
connection state beyond the partial message: what a ping, a close or a message means is
up to its `FrameSink` (app/transports/websocket/lean.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.transports.websocket.deflate import Inflater

# aiohttp's compiled XOR, the one its own WebSocket reader unmasks with (in place, on a
# bytearray; aiohttp is pinned, and this is its Cython extension module). Against the
# big-integer XOR of `unmask` below, per frame on this machine: 0.3 us instead of 1.1 us
# for 40 bytes, 0.3 / 1.5 us for a 190-byte connect + subscribe, 0.6 / 4.9 us for 1 KB,
# 0.8 / 46 us for 10 KB. An aiohttp built without its extensions has no such module.
_mask_in_place: Callable[[bytes, bytearray], None] | None
try:
    from aiohttp._websocket.mask import (  # type: ignore[import-not-found,unused-ignore]
        _websocket_mask_cython,
    )

    _mask_in_place = _websocket_mask_cython
except ImportError:  # pragma: no cover (aiohttp without its C extensions)
    _mask_in_place = None

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
FIN = 0x80
RSV1 = 0x40

# Centrifugo's message size limit when the configured one is 0.
DEFAULT_MESSAGE_SIZE_LIMIT = 65536

# Close codes a peer may send (RFC 6455 §7.4): the defined ones and 3000-4999.
_PEER_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)

HEADER_16 = struct.Struct("!BBH").pack
HEADER_64 = struct.Struct("!BBQ").pack
# Server frame headers (FIN set, no mask) of payloads shorter than 126 bytes, by length.
SHORT_HEADERS = {op: tuple(bytes((FIN | op, n)) for n in range(126)) for op in (OP_TEXT, OP_BINARY)}
# The last message framed, per opcode: (message, header + message). See the docstring;
# WebSocketTransport.write_now (transport.py) frames with these inline, on its hot path.
LAST_FRAMED: dict[int, tuple[bytes, bytes]] = {op: (b"", b"") for op in (OP_TEXT, OP_BINARY)}


def message_size_limit(configured: int) -> int:
    """Centrifugo's `websocket.message_size_limit`: 0 (or less) means its default 64 KB."""
    return configured if configured > 0 else DEFAULT_MESSAGE_SIZE_LIMIT


class ProtocolError(Exception):
    """A peer's frame broke RFC 6455: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def server_frame(first: int, payload: bytes) -> bytes:
    """A server frame (no mask) with the given first byte (FIN, RSV bits, opcode)."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return HEADER_16(first, 126, n) + payload
    return HEADER_64(first, 127, n) + payload


def close_frame(code: int, message: bytes = b"") -> bytes:
    # Disconnect codes are uint32 (a proxy may send any); the close frame holds 16 bits and
    # Centrifugo writes uint16(code), as here.
    payload = (code & 0xFFFF).to_bytes(2, "big") + message[:123]
    return bytes((FIN | OP_CLOSE, len(payload))) + payload


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping: its payload back (at most 125 bytes, checked on reading)."""
    return bytes((FIN | OP_PONG, len(payload))) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask: aiohttp's compiled XOR where it is built, else one
    big-integer operation (C speed too, but it grows faster with the size)."""
    n = len(payload)
    if not n:
        return b""
    if _mask_in_place is not None:
        data = bytearray(payload)
        _mask_in_place(mask, data)
        return bytes(data)
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def check_close(payload: bytes) -> None:
    """A peer's close frame payload: empty, or a code it may send and a UTF-8 reason."""
    if len(payload) == 1:
        raise ProtocolError(1002, "bad close frame")
    if payload:
        code = int.from_bytes(payload[:2], "big")
        if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
            raise ProtocolError(1002, f"bad close code {code}")
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            raise ProtocolError(1007, "invalid UTF-8 close reason") from None


class FrameSink(Protocol):
    """What a `FrameReader` hands its frames to."""

    def on_message(self, payload: bytes) -> None:
        """A complete data message (text already checked to be UTF-8)."""

    def on_ping(self, payload: bytes) -> None:
        """A ping: answer with `pong_frame(payload)` unless closing."""

    def on_close(self, payload: bytes) -> None:
        """The peer's close frame (payload checked by `check_close`). Nothing after it is
        read: the reader stops and drops the rest of what it was fed."""


class FrameReader:
    """One connection's client frames, parsed as they arrive (see the module docstring).
    Messages over `limit` bytes (0: no limit) raise ProtocolError 1009 as soon as their
    header says so, before the payload is buffered."""

    __slots__ = (
        "_buf",
        "_limit",
        "_inflater",
        "_frag_op",
        "_frag_rsv",
        "_frag",
        "_frag_size",
        "stopped",
    )

    def __init__(self, limit: int, inflater: Inflater | None = None) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._inflater = inflater  # permessage-deflate negotiated
        self._frag_op = 0
        self._frag_rsv = 0  # RSV1 of the fragmented message's first frame
        self._frag: list[bytes] = []
        self._frag_size = 0
        self.stopped = False  # the peer's close frame came: nothing more is read

    @property
    def inflates(self) -> bool:
        """Whether permessage-deflate was negotiated (compressed messages are inflated)."""
        return self._inflater is not None

    def feed(self, data: bytes, sink: FrameSink) -> None:
        """Parse what `data` completes, handing each message and control frame to `sink`
        (passed per call, so the reader holds no reference back to its connection);
        raises ProtocolError (the buffer is then dropped)."""
        if self.stopped:
            return
        buf = self._buf
        buf += data
        try:
            used = self._parse(buf, sink)
        except ProtocolError:
            buf.clear()
            raise
        if used:
            del buf[:used]

    def _parse(self, buf: bytearray, sink: FrameSink) -> int:
        """Handle every complete frame in buf; returns the bytes consumed."""
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - start < 2:
                    break
                length = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif length == 127:
                if n - start < 8:
                    break
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            if not b1 & 0x80:
                raise ProtocolError(1002, "client frame not masked")
            if b0 & 0x0F >= OP_CLOSE:
                if length > 125:
                    raise ProtocolError(1002, "control frame too long")
            elif 0 < self._limit < self._frag_size + length:
                raise ProtocolError(1009, "message too big")
            end = start + 4 + length
            if n < end:
                break
            if _mask_in_place is not None and end > start + 4:
                data = buf[start + 4 : end]  # a copy: unmasked in place
                _mask_in_place(bytes(buf[start : start + 4]), data)
                payload = bytes(data)
            else:
                payload = unmask(bytes(buf[start + 4 : end]), bytes(buf[start : start + 4]))
            pos = end
            self._frame(b0, payload, sink)
            if self.stopped:
                return n  # nothing after the peer's close frame is read
        return pos

    def _frame(self, b0: int, payload: bytes, sink: FrameSink) -> None:
        op = b0 & 0x0F
        fin = b0 & FIN
        rsv = b0 & 0x70
        if rsv and (rsv != RSV1 or self._inflater is None or op == OP_CONT):
            raise ProtocolError(1002, "reserved bits set")
        if op >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise ProtocolError(1002, "bad control frame")
            if op == OP_PING:
                sink.on_ping(payload)
            elif op == OP_CLOSE:
                check_close(payload)
                self.stopped = True
                sink.on_close(payload)
            elif op != OP_PONG:
                raise ProtocolError(1002, f"unknown opcode {op}")
            return
        if op == OP_CONT:
            if not self._frag_op:
                raise ProtocolError(1002, "continuation of nothing")
        elif op in (OP_TEXT, OP_BINARY):
            if self._frag_op:
                raise ProtocolError(1002, "new message inside a fragmented one")
        else:
            raise ProtocolError(1002, f"unknown opcode {op}")
        if not fin:
            if op:
                self._frag_op = op
                self._frag_rsv = rsv
            self._frag.append(payload)
            self._frag_size += len(payload)
            return
        if self._frag_op:
            op = self._frag_op
            rsv = self._frag_rsv
            self._frag.append(payload)
            payload = b"".join(self._frag)
            self._frag_op = 0
            self._frag = []
            self._frag_size = 0
        if rsv:  # compressed (the checks above allow RSV1 only with an inflater)
            assert self._inflater is not None
            payload = self._inflater.inflate(payload)
        if op == OP_TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 text") from None
        sink.on_message(payload)
