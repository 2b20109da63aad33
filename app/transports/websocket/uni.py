"""Unidirectional WebSocket at `uni_websocket.handler_prefix` (research §1.11, §1.12).

The ConnectRequest comes as the `cf_connect` query parameter or, when that is absent, as
the first text message (`{}` is fine). The server then only writes: one JSON Push per
WebSocket message, or a burst newline-joined into one message with `join_push_messages`.
A disconnect is a `disconnect` push followed by a close frame with the same code and
reason (`disable_disconnect_push` keeps only the close frame). Messages the client sends
after connecting are read and ignored.

`uni_websocket.write_timeout` bounds each write (3009 when the peer takes nothing) and the
close, as on the bidirectional endpoint (the connection contract,
app/transports/websocket/connection.py): a peer that reads nothing holds no memory or
kernel buffers once dropped. Served by aiohttp's WebSocketResponse.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSMsgType, web

from app import metrics
from app.client import State
from app.config import Config
from app.errors import DISCONNECT_BAD_REQUEST, Disconnect
from app.node import NODE_KEY
from app.protocol import Codec
from app.protocol.json import JSON_UNI
from app.transports import admission, closing
from app.transports.uni_connect import (
    BadConnectRequest,
    connect,
    decode_connect_request,
    new_client,
)
from app.transports.websocket.connection import AiohttpConnection, WebSocketConnection
from app.transports.websocket.deflate import Deflater, max_message_size
from app.transports.websocket.frames import FIN, OP_TEXT, server_frame
from app.transports.websocket.handshake import deflate_offer, refuse_bad_key

log = logging.getLogger("centrifugo.uni_websocket")

CONNECT_PARAM = "cf_connect"
# Centrifugo's defaults when the options are zero.
DEFAULT_PING_INTERVAL = 25.0
DEFAULT_MESSAGE_SIZE_LIMIT = 65536
_TEXT_FIN = FIN | OP_TEXT


class UniWebSocketTransport:
    """Frames are built here and written synchronously (the writer's fast path, which
    bounds what the peer leaves unread by `write_timeout`), compressed per
    app/transports/websocket/deflate.py when the client negotiated permessage-deflate."""

    name = "uni_websocket"
    codec: Codec = JSON_UNI
    unidirectional = True

    __slots__ = (
        "_conn",
        "_sock",
        "_join",
        "_handshake",
        "_deflater",
        "write_timeout",
        "disconnect_push",
        "closing",
    )

    def __init__(
        self,
        conn: WebSocketConnection,
        sock: asyncio.Transport,
        *,
        join: bool,
        disconnect_push: bool,
        handshake: bool,
        write_timeout: float,
        deflater: Deflater | None = None,
    ) -> None:
        self._conn = conn
        self._sock = sock
        self._join = join
        self._handshake = handshake  # False: close the socket without a closing handshake
        self._deflater = deflater
        self.write_timeout = write_timeout
        self.disconnect_push = disconnect_push
        self.closing = False  # we are closing the connection

    def write_now(self, frame: bytes) -> int:
        sock = self._sock
        # After aiohttp started a closing handshake no data frame may follow the close.
        if self._conn.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        # A frame is newline-joined pushes (compact JSON has no raw newlines).
        messages = (frame,) if self._join or b"\n" not in frame else frame.split(b"\n")
        deflater = self._deflater
        for msg in messages:
            if deflater is None:
                sock.write(server_frame(_TEXT_FIN, msg))
            else:
                sock.write(deflater.frame(msg, OP_TEXT))
        return sock.get_write_buffer_size()

    def write_many_now(self, frames: list[bytes]) -> int:
        for frame in frames:  # one WebSocket message per push (or per frame, joined)
            self.write_now(frame)
        return self._sock.get_write_buffer_size()

    def unsent(self) -> int:
        return self._sock.get_write_buffer_size()

    async def write(self, frame: bytes) -> None:
        self.write_now(frame)

    async def close(self, disconnect: Disconnect) -> None:
        self.closing = True
        if not self._handshake:
            closing.release(self._sock, self.write_timeout)
            return
        if not self._conn.closed:  # our close frame, not an answer to the peer's
            metrics.child(metrics.OUTGOING_CLOSE, self.name, str(disconnect.code)).inc()
        # WebSocket close reasons are limited to 123 bytes.
        await self._conn.close(disconnect.code, disconnect.reason.encode()[:123])


async def uni_websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    ucfg = cfg.uni_websocket
    refused = admission.check(node, request.headers.get("Origin"))
    if refused is not None:
        return refused.response()
    connect_request: dict[str, Any] | None = None
    raw = request.query.get(CONNECT_PARAM, "")
    if raw:
        try:
            connect_request = decode_connect_request(raw)
        except BadConnectRequest as e:
            log.info("uni_websocket: malformed connect request: %s", e)
            return web.Response(status=400, text="invalid connect request")

    size_limit = ucfg.message_size_limit or DEFAULT_MESSAGE_SIZE_LIMIT
    window_bits, notakeover = deflate_offer(request.headers) if ucfg.compression else (0, False)
    if size_limit <= 0:
        max_msg_size = 0
    elif window_bits:
        max_msg_size = max_message_size(size_limit, ucfg.decompressed_message_size_limit)
    else:
        # aiohttp refuses a message of exactly max_msg_size; Centrifugo allows it.
        max_msg_size = size_limit + 1
    ws = web.WebSocketResponse(
        max_msg_size=max_msg_size,
        compress=ucfg.compression,
        # Protocol-level pings keep proxies from dropping a socket that is only written to.
        heartbeat=cfg.client.ping_interval
        if cfg.client.ping_interval > 0
        else DEFAULT_PING_INTERVAL,
        autoping=True,
    )
    bad = refuse_bad_key(request)
    if bad is not None:
        return bad
    await ws.prepare(request)
    sock = request.transport
    if sock is None:  # the peer left right after the upgrade
        return ws

    transport = UniWebSocketTransport(
        AiohttpConnection(ws, sock, ucfg.write_timeout),
        sock,
        join=ucfg.join_push_messages,
        disconnect_push=not ucfg.disable_disconnect_push,
        handshake=not ucfg.disable_closing_handshake,
        write_timeout=ucfg.write_timeout,
        deflater=Deflater(
            ucfg.compression_level, ws.compress, notakeover, ucfg.compression_min_size
        )
        if ws.compress
        else None,
    )
    client = new_client(node, transport, request.headers)
    try:
        if connect_request is None:
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return ws  # closed before sending the ConnectRequest
            try:
                connect_request = decode_connect_request(msg.data)
            except BadConnectRequest as e:
                log.info("uni_websocket: malformed connect request: %s", e)
                await client.close(None)
                await ws.close(code=DISCONNECT_BAD_REQUEST, message=b"bad request")
                return ws
        # The client may have gone stale while the first message was awaited.
        if client.state is State.CONNECTING:
            await connect(client, connect_request)
        async for _ in ws:
            pass  # nothing is expected from the client; reading notices the close
    finally:
        await client.transport_closed()
        if not transport.closing:
            # The peer closed: aiohttp answered and closes the socket once its buffer is
            # sent, however long that takes. Bounded here.
            closing.release(sock, ucfg.write_timeout)
    return ws


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_websocket endpoint when `uni_websocket.enabled`."""
    if cfg.uni_websocket.enabled:
        app.router.add_get(cfg.uni_websocket.handler_prefix, uni_websocket_handler)
