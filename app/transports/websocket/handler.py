"""Bidirectional WebSocket at `websocket.handler_prefix` served by aiohttp's handler: the
upgrades the lean path (app/transports/websocket/lean.py) hands over: odd or malformed
request heads (obs-fold, rare header characters, a body) and the internal port. Plain
upgrades, with or without permessage-deflate, never reach it.

The socket is then served by the same `WebSocketTransport` as on the lean path, over
aiohttp's `WebSocketResponse` adapted to the connection contract (`AiohttpConnection`,
app/transports/websocket/connection.py). Incoming frames are decoded by the connection's
codec whatever their WebSocket type (Centrifugo reads both alike), so JSON text on a
Protobuf connection fails to decode and closes with 3501.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from app.client import Client
from app.node import NODE_KEY
from app.transports import admission, closing
from app.transports.websocket.connection import CLOSE_TIMEOUT, AiohttpConnection
from app.transports.websocket.deflate import Deflater, max_message_size
from app.transports.websocket.frames import message_size_limit
from app.transports.websocket.handshake import (
    deflate_offer,
    refuse_bad_key,
    select_codec,
    select_subprotocol,
)
from app.transports.websocket.transport import DeflateWebSocketTransport, WebSocketTransport

log = logging.getLogger("centrifugo.websocket")


def _release_http_parser(request: web.Request) -> None:
    """Drop aiohttp's HTTP request parser once the upgrade is done (~1 KB per idle
    connection, issue 7). From then on aiohttp feeds bytes to the WebSocket reader only;
    every remaining use of the HTTP parser in its protocol checks for None (it is what
    connection_lost leaves behind)."""
    proto = request.protocol
    # aiohttp's own attributes (typed in its RequestHandler), read as its data_received does.
    if proto._upgraded and proto._payload_parser is not None:
        proto._parser = None


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    refused = admission.check(node, request.headers.get("Origin"))
    if refused is not None:
        return refused.response()
    bad = refuse_bad_key(request)
    if bad is not None:
        return bad
    subprotocol = select_subprotocol(request.headers)
    wcfg = cfg.websocket
    window_bits, notakeover = deflate_offer(request.headers) if wcfg.compression else (0, False)
    size_limit = message_size_limit(wcfg.message_size_limit)
    ws = web.WebSocketResponse(
        protocols=(subprotocol,) if subprotocol else (),
        # aiohttp refuses a message of exactly max_msg_size; Centrifugo allows it.
        max_msg_size=max_message_size(size_limit, wcfg.decompressed_message_size_limit)
        if window_bits
        else size_limit + 1,
        compress=wcfg.compression,
        autoping=True,
        timeout=CLOSE_TIMEOUT,
    )
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        # The socket closed during the upgrade (peer gone, worker draining): nothing to
        # log. aiohttp's attempt to send this response fails quietly the same way.
        return web.Response(status=499)
    sock = request.transport
    if sock is None:  # the peer left right after the upgrade
        return ws
    _release_http_parser(request)
    codec = select_codec(request.query, subprotocol)
    conn = AiohttpConnection(ws, sock, wcfg.write_timeout)
    transport: WebSocketTransport
    if ws.compress:
        deflater = Deflater(
            wcfg.compression_level, ws.compress, notakeover, wcfg.compression_min_size
        )
        transport = DeflateWebSocketTransport(
            conn,
            sock,
            codec,
            deflater,
            write_timeout=wcfg.write_timeout,
        )
    else:
        transport = WebSocketTransport(
            conn,
            sock,
            codec,
            write_timeout=wcfg.write_timeout,
        )
    client = Client(node, transport, headers=request.headers)
    try:
        # `receive()` rather than `async for`: one coroutine frame less held per idle
        # connection; any other message type (close, error) ends the loop the same way.
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode()
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
            else:
                break
            msg = None  # type: ignore[assignment]  # an idle connection keeps no copy
            if not await client.handle_frame(data):
                break
            data = None
        if ws.close_code == 1009:
            log.info(
                "client %s sent a message over websocket.%s",
                client.uid,
                "decompressed_message_size_limit" if ws.compress else "message_size_limit",
            )
    finally:
        await client.transport_closed()
        if not transport.closing:
            # The peer closed, or broke the protocol: aiohttp answered and closes the
            # socket once its buffer is sent, however long that takes. Bounded here
            # (our own close bounds itself, in AiohttpConnection.close).
            closing.release(sock, cfg.websocket.write_timeout)
    return ws
