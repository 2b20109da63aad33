"""The one contract between a WebSocket transport and the server that accepted the socket.

Two servers accept WebSockets: the lean protocol (app/transports/websocket/lean.py, plain
upgrades) and aiohttp's `WebSocketResponse` (compression, unidirectional endpoint).
A transport (transport.py, uni.py) writes its data frames straight to the socket itself
and asks the connection only two things, declared here as `WebSocketConnection`: whether
a close frame of ours is already out (no data frame may follow it), and to run the
bounded closing handshake. `LeanWebSocket` satisfies it itself; `AiohttpConnection` adapts
aiohttp's response to it.

Closing is bounded on both: a close frame that does not reach the kernel within
`websocket.write_timeout` (a peer that reads nothing), or that the peer does not answer
within CLOSE_TIMEOUT, drops the socket with what it holds (RST,
app/transports/closing.py): nothing of a peer we gave up on stays in memory or in the
kernel.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from aiohttp import WSCloseCode, web

from app.transports import closing

# How long a close of ours waits for the peer's close frame before dropping the socket:
# Centrifugo's closeFrameWait.
CLOSE_TIMEOUT = 5.0


class WebSocketConnection(Protocol):
    """One upgraded WebSocket, whichever server accepted it."""

    @property
    def closed(self) -> bool:
        """Our close frame is out, or the socket is gone: no data frame may follow."""
        ...

    async def close(self, code: int, message: bytes) -> None:
        """Send a close frame with uint16(`code`) (as Centrifugo writes any disconnect
        code) and `message` (at most 123 bytes), then wait for the peer's close frame,
        bounded as the module docstring says; the socket is released or dropped after.
        Never raises for a peer that is gone; a second call does nothing."""
        ...


class AiohttpConnection:
    """aiohttp's `WebSocketResponse` as a `WebSocketConnection`."""

    __slots__ = ("_ws", "_sock", "_write_timeout")

    def __init__(
        self, ws: web.WebSocketResponse, sock: asyncio.Transport, write_timeout: float
    ) -> None:
        self._ws = ws
        self._sock = sock  # the request's asyncio transport, after the upgrade
        self._write_timeout = write_timeout

    @property
    def closed(self) -> bool:
        # aiohttp sets it once it started its closing handshake (or the socket broke).
        return self._ws.closed

    async def close(self, code: int, message: bytes) -> None:
        """aiohttp's closing handshake with a peer that may not read: no drain (a slow
        client's backlog must not hold the close up); a close frame that has not reached
        the kernel within the write timeout drops the socket; so does a peer that does
        not answer within the response's timeout (aiohttp would close it gracefully,
        which waits for the peer to read everything first, forever)."""
        ws, sock, write_timeout = self._ws, self._sock, self._write_timeout

        def stuck() -> None:
            if sock.get_write_buffer_size():
                closing.abort(sock)

        guard = None
        if write_timeout > 0:
            guard = asyncio.get_running_loop().call_later(write_timeout, stuck)
        try:
            await ws.close(code=code & 0xFFFF, message=message[:123], drain=False)
        finally:
            if guard is not None:
                guard.cancel()
        if ws.close_code == WSCloseCode.ABNORMAL_CLOSURE:
            closing.abort(sock)  # the peer never answered: drop what it left
        else:
            closing.release(sock, write_timeout)


if TYPE_CHECKING:  # conformance, proved by mypy (the lean one is asserted in lean.py)
    _: type[WebSocketConnection] = AiohttpConnection
