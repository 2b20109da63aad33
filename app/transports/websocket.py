"""Bidirectional WebSocket transport at `websocket.handler_prefix` (JSON or Protobuf).

Disconnects travel as the close frame's code and reason (no disconnect push),
which is how SDKs decide whether to reconnect.

Protocol selection follows Centrifugo: Protobuf when the client negotiates the
`centrifuge-protobuf` sub-protocol or asks with `?format=protobuf` /
`?cf_protocol=protobuf`; JSON otherwise. Protobuf frames go out as binary
messages. Incoming frames are decoded by the connection's codec whatever their
WebSocket type (Centrifugo reads both alike), so JSON text on a Protobuf
connection fails to decode and closes with 3501.
"""

from __future__ import annotations

import fnmatch
import logging

from aiohttp import WSMsgType, web

from app.client import Client
from app.errors import Disconnect
from app.node import NODE_KEY
from app.protocol import Codec
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF

log = logging.getLogger("centrifugo.websocket")

_CLOSE_TYPES = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)

# Server preference order, as in Centrifugo's upgrader.
SUBPROTOCOLS = ("centrifuge-json", "centrifuge-protobuf")


class WebSocketTransport:
    name = "websocket"
    unidirectional = False
    disconnect_push = False  # the close frame carries code and reason

    __slots__ = ("_ws", "codec", "_msg_type")

    def __init__(self, ws: web.WebSocketResponse, codec: Codec = JSON) -> None:
        self._ws = ws
        self.codec = codec
        self._msg_type = WSMsgType.TEXT if codec is JSON else WSMsgType.BINARY

    async def write(self, frame: bytes) -> None:
        await self._ws.send_frame(frame, self._msg_type)

    async def close(self, disconnect: Disconnect) -> None:
        # WebSocket close reasons are limited to 123 bytes.
        await self._ws.close(code=disconnect.code, message=disconnect.reason.encode()[:123])


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Same rule as Centrifugo: no Origin header passes; otherwise a glob must match."""
    if not origin:
        return True
    origin = origin.lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in allowed)


def select_subprotocol(request: web.Request) -> str | None:
    """The first of our sub-protocols that the client offers (server preference)."""
    offered = {
        p.strip()
        for h in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in h.split(",")
    }
    return next((p for p in SUBPROTOCOLS if p in offered), None)


def select_codec(request: web.Request, subprotocol: str | None) -> Codec:
    query = request.query
    if (
        subprotocol == "centrifuge-protobuf"
        or query.get("format") == "protobuf"
        or query.get("cf_protocol") == "protobuf"
    ):
        return PROTOBUF
    return JSON


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    if not origin_allowed(request.headers.get("Origin"), cfg.client.allowed_origins):
        log.info("request Origin %r is not allowed", request.headers.get("Origin"))
        return web.Response(status=403, text="Invalid origin")
    if node.closing:
        return web.Response(status=503, text="shutting down")
    limit = cfg.client.connection_limit
    if limit > 0 and node.hub.num_clients >= limit:
        log.info("node connection limit %d reached", limit)
        return web.Response(status=503, text="connection limit reached")
    subprotocol = select_subprotocol(request)
    ws = web.WebSocketResponse(
        protocols=(subprotocol,) if subprotocol else (),
        # aiohttp refuses a message of exactly max_msg_size; Centrifugo allows it.
        max_msg_size=cfg.websocket.message_size_limit + 1,
        compress=cfg.websocket.compression,
        autoping=True,
    )
    await ws.prepare(request)
    transport = WebSocketTransport(ws, select_codec(request, subprotocol))
    client = Client(node, transport, headers=request.headers)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode()
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
            else:
                break
            if not await client.handle_frame(data):
                break
        if ws.close_code == 1009:
            log.info("client %s sent a message over websocket.message_size_limit", client.uid)
    finally:
        await client.transport_closed()
    return ws
