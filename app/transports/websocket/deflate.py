"""permessage-deflate (RFC 7692) on the server's side of a WebSocket: Centrifugo's
`compression_level`, `compression_min_size` and `decompressed_message_size_limit`, shared
by the bidirectional and the unidirectional endpoint.

aiohttp negotiates the extension and inflates what clients send, but its writer always
deflates at level 1 and compresses every message. Frames are therefore compressed here
with zlib at the configured level and written as whole frames (RSV1 set) to the socket,
synchronously, like the uncompressed fast path (app/transports/websocket/frames.py); a message
of at most `compression_min_size` bytes goes out uncompressed (RSV1 clear), as
Centrifugo's `len(data) > compressionMinSize` rule does. aiohttp's own writer then only
sends control frames (pong, close), which are never compressed.

Compression runs on the event loop: zlib at level 1 deflates ~100 MB/s on this machine
kind, so a 64 KB frame costs well under a millisecond (aiohttp hands frames over 16 KB to
a thread, which costs a task and a thread hop per frame instead).

Inbound, Centrifugo bounds a compressed connection's messages twice: `message_size_limit`
on the wire and `decompressed_message_size_limit` (default ten times the former) once
inflated, closing with 1009 over either. aiohttp has one bound for both, so the
connection gets the larger (`max_msg_size`): the inflated bound is exact, the wire bound
of a compressed connection is that same larger number.
"""

from __future__ import annotations

import zlib

from app.transports.websocket.frames import FIN, RSV1, server_frame

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
