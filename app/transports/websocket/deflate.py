"""permessage-deflate (RFC 7692) on the server's side of a WebSocket: Centrifugo's
`compression_level`, `compression_min_size` and `decompressed_message_size_limit`, shared
by the bidirectional and the unidirectional endpoint.

The lean path (app/transports/websocket/lean.py) negotiates the extension in its
handshake (handshake.py, with aiohttp's own parser, so both paths answer an offer alike)
and inflates what clients send with `Inflater`; on aiohttp's path (handed-over requests,
uni_websocket) aiohttp does both. aiohttp's writer would always deflate at level 1 and
compress every message, so on either path frames are compressed here by `Deflater`, with
zlib at the configured level, and written as whole frames (RSV1 set) to the socket,
synchronously, like the uncompressed fast path (app/transports/websocket/transport.py); a
message of at most `compression_min_size` bytes goes out uncompressed (RSV1 clear), as
Centrifugo's `len(data) > compressionMinSize` rule does. Control frames (pong, close) are
never compressed.

Compression runs on the event loop: zlib at level 1 deflates ~100 MB/s on this machine
kind, so a 64 KB frame costs well under a millisecond (aiohttp hands frames over 16 KB to
a thread, which costs a task and a thread hop per frame instead).

Inbound, Centrifugo bounds a compressed connection's messages twice: `message_size_limit`
on the wire and `decompressed_message_size_limit` (default ten times the former) once
inflated, closing with 1009 over either. aiohttp has one bound for both, so the
connection gets the larger (`max_msg_size`): the inflated bound is exact, the wire bound
of a compressed connection is that same larger number. The lean path keeps the same two
numbers (`lean_limits`), so a client sees one rule whichever path served it.
"""

from __future__ import annotations

import zlib

from app.transports.websocket.frames import FIN, RSV1, ProtocolError, server_frame

# Centrifugo: decompressed limit = message_size_limit * this, when not configured.
DEFAULT_DECOMPRESSED_MULTIPLIER = 10
_TAIL = b"\x00\x00\xff\xff"  # what a sync flush ends with; RFC 7692 §7.2.1 drops it


def max_message_size(message_size_limit: int, decompressed_limit: int) -> int:
    """aiohttp's `max_msg_size` for a connection that negotiated compression (it refuses
    a message of exactly that many bytes on the wire, more than that once inflated)."""
    limit = decompressed_limit
    if limit <= 0:
        limit = message_size_limit * DEFAULT_DECOMPRESSED_MULTIPLIER
    return max(limit, message_size_limit + 1)


def lean_limits(message_size_limit: int, decompressed_limit: int) -> tuple[int, int]:
    """The lean reader's (wire, inflated) bounds of a compressed connection, in its own
    terms (a message of exactly the bound passes): aiohttp's `max_message_size` M refuses
    M bytes on the wire and passes M once inflated."""
    m = max_message_size(message_size_limit, decompressed_limit)
    return m - 1, m


def _compressor(level: int, window_bits: int) -> zlib._Compress:
    """Go's flate levels: -2 Huffman only, -1 default, 0 none (stored), 1-9; anything
    else is what gorilla's SetCompressionLevel refuses, keeping its default level 1."""
    if level == -2:
        return zlib.compressobj(1, zlib.DEFLATED, -window_bits, 8, zlib.Z_HUFFMAN_ONLY)
    if not -1 <= level <= 9:
        level = 1
    return zlib.compressobj(level, zlib.DEFLATED, -window_bits)


class Deflater:
    """One connection's compressor (its LZ77 window is context taken over between
    messages unless the client asked for server_no_context_takeover)."""

    __slots__ = ("_z", "_flush", "min_size")

    def __init__(self, level: int, window_bits: int, notakeover: bool, min_size: int) -> None:
        self._z = _compressor(level, window_bits)
        # A full flush also forgets the window: the next message starts afresh.
        self._flush = zlib.Z_FULL_FLUSH if notakeover else zlib.Z_SYNC_FLUSH
        self.min_size = min_size

    def frame(self, message: bytes, opcode: int) -> bytes:
        """The whole server frame of one message (FIN, no mask), compressed when it is
        longer than `min_size`."""
        first = FIN | opcode
        if len(message) > self.min_size:
            z = self._z
            message = z.compress(message) + z.flush(self._flush)
            if message.endswith(_TAIL):
                message = message[:-4]
            first |= RSV1
        return server_frame(first, message)


class Inflater:
    """One connection's decompressor of client messages (the lean path's; aiohttp's
    reader has its own). Its window is taken over between messages: the handshake
    answers as aiohttp's does, never with client_no_context_takeover. A message that
    inflates past `limit` bytes (0: no limit) closes with 1009, found without inflating
    more than one byte past it."""

    __slots__ = ("_z", "limit")

    def __init__(self, limit: int) -> None:
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # any client window fits in 15 bits
        self.limit = limit

    def inflate(self, payload: bytes) -> bytes:
        limit = self.limit
        try:
            message = self._z.decompress(payload + _TAIL, limit + 1 if limit else 0)
        except zlib.error:
            raise ProtocolError(1007, "bad compressed data") from None
        if limit and len(message) > limit:
            raise ProtocolError(1009, "decompressed message too big")
        return message
