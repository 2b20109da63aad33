"""The bidirectional WebSocket's `SyncTransport` (app/transport.py): what a `Client` writes to.

Disconnects travel as the close frame's code and reason (no disconnect push), which is
how SDKs decide whether to reconnect. Protobuf frames go out as binary messages, JSON as
text.

`websocket.write_timeout` (Centrifugo's, default 1 s) bounds every write: bytes the
kernel does not take within it disconnect the client with 3009 (app/writer.py), and the
close is bounded by the connection (app/transports/websocket/connection.py).

The same transport serves both servers: it holds a `WebSocketConnection` (the lean
protocol or aiohttp's response, adapted) and the socket, and frames data itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from app import metrics
from app.errors import Disconnect
from app.protocol import Codec
from app.protocol.json import JSON
from app.transports.websocket.connection import WebSocketConnection
from app.transports.websocket.deflate import Deflater
from app.transports.websocket.frames import (
    FIN,
    HEADER_16,
    HEADER_64,
    LAST_FRAMED,
    OP_BINARY,
    OP_TEXT,
    SHORT_HEADERS,
)

if TYPE_CHECKING:
    from app.transport import SyncTransport


class WebSocketTransport:
    """`write_now` frames a message and writes it synchronously to the socket (RFC 6455
    §5.2 server frame: FIN, opcode, length, no mask), which is what aiohttp's
    `send_frame` does for uncompressed frames minus the coroutine. Connections that
    negotiated permessage-deflate use `DeflateWebSocketTransport`."""

    name = "websocket"
    unidirectional = False
    disconnect_push = False  # the close frame carries code and reason

    __slots__ = (
        "_conn",
        "_sock",
        "codec",
        "_opcode",
        "_first",
        "_short",
        "write_timeout",
        "closing",
    )

    def __init__(
        self,
        conn: WebSocketConnection,
        sock: asyncio.Transport,
        codec: Codec,
        *,
        write_timeout: float = 0.0,
    ) -> None:
        self._conn = conn
        self._sock = sock  # the connection's asyncio transport, after the upgrade
        self.codec = codec
        self.write_timeout = write_timeout  # seconds; 0: no limit
        self.closing = False  # we started the closing handshake
        self._opcode = OP_TEXT if codec is JSON else OP_BINARY
        self._first = FIN | self._opcode
        self._short = SHORT_HEADERS[self._opcode]

    def write_now(self, frame: bytes) -> int:
        sock = self._sock
        # After a close frame of ours (or aiohttp's) no data frame may follow.
        if self._conn.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        # frames.py's framing, inlined: this runs once per subscriber of a fan-out.
        last, framed = LAST_FRAMED[self._opcode]
        if frame is not last:
            n = len(frame)
            if n < 126:
                framed = self._short[n] + frame
            elif n < 65536:
                framed = HEADER_16(self._first, 126, n) + frame
            else:  # no copy of a big payload: header and payload written apart
                sock.write(HEADER_64(self._first, 127, n))
                sock.write(frame)
                return sock.get_write_buffer_size()
            LAST_FRAMED[self._opcode] = (frame, framed)
        sock.write(framed)
        return sock.get_write_buffer_size()

    def write_many_now(self, frames: list[bytes]) -> int:
        sock = self._sock
        if self._conn.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        # Each frame gets its header; all go out in one writelines (one send syscall, not
        # one per frame: with an empty buffer every sock.write tries its own send).
        first = self._first
        short = self._short
        parts: list[bytes] = []
        for frame in frames:
            n = len(frame)
            if n < 126:
                parts.append(short[n])
            elif n < 65536:
                parts.append(HEADER_16(first, 126, n))
            else:
                parts.append(HEADER_64(first, 127, n))
            parts.append(frame)
        sock.writelines(parts)
        return sock.get_write_buffer_size()

    def unsent(self) -> int:
        return self._sock.get_write_buffer_size()

    async def write(self, frame: bytes) -> None:
        self.write_now(frame)

    async def close(self, disconnect: Disconnect) -> None:
        self.closing = True
        if not self._conn.closed:  # our close frame, not an answer to the peer's
            metrics.child(metrics.OUTGOING_CLOSE, self.name, str(disconnect.code)).inc()
        # WebSocket close reasons are limited to 123 bytes.
        await self._conn.close(disconnect.code, disconnect.reason.encode()[:123])


class DeflateWebSocketTransport(WebSocketTransport):
    """permessage-deflate: each frame compressed at the configured level (or not, up to
    `compression_min_size`) and written whole, synchronously
    (app/transports/websocket/deflate.py)."""

    __slots__ = ("_deflater",)

    def __init__(
        self,
        conn: WebSocketConnection,
        sock: asyncio.Transport,
        codec: Codec,
        deflater: Deflater,
        *,
        write_timeout: float = 0.0,
    ) -> None:
        super().__init__(conn, sock, codec, write_timeout=write_timeout)
        self._deflater = deflater

    def write_now(self, frame: bytes) -> int:
        sock = self._sock
        if self._conn.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        sock.write(self._deflater.frame(frame, self._opcode))
        return sock.get_write_buffer_size()

    def write_many_now(self, frames: list[bytes]) -> int:
        sock = self._sock
        if self._conn.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        deflate, opcode = self._deflater.frame, self._opcode
        sock.writelines([deflate(frame, opcode) for frame in frames])
        return sock.get_write_buffer_size()


if TYPE_CHECKING:  # conformance, proved by mypy
    _: type[SyncTransport] = WebSocketTransport
