"""Bidirectional WebSocket transport at `websocket.handler_prefix` (JSON or Protobuf).

Disconnects travel as the close frame's code and reason (no disconnect push),
which is how SDKs decide whether to reconnect.

`websocket.write_timeout` (Centrifugo's, default 1 s) bounds every write: bytes the
kernel does not take within it disconnect the client with 3009 (app/writer.py), and a
close frame that does not reach the kernel within it (a peer that reads nothing) drops
the socket at once. A close whose handshake the peer does not complete drops it too:
nothing of a peer we gave up on stays in memory or in the kernel (app/transports/closing.py).

Protocol selection follows Centrifugo: Protobuf when the client negotiates the
`centrifuge-protobuf` sub-protocol or asks with `?format=protobuf` /
`?cf_protocol=protobuf`; JSON otherwise. Protobuf frames go out as binary
messages. Incoming frames are decoded by the connection's codec whatever their
WebSocket type (Centrifugo reads both alike), so JSON text on a Protobuf
connection fails to decode and closes with 3501.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import struct
from collections.abc import Mapping

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import MultiMapping

from app.client import Client
from app.errors import Disconnect
from app.node import NODE_KEY
from app.protocol import Codec
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF
from app.transports import admission, closing, deflate
from app.transports.deflate import Deflater

log = logging.getLogger("centrifugo.websocket")

_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack
# Server frame headers (FIN set, no mask) of payloads shorter than 126 bytes, by length.
_SHORT_HEADERS = {
    op: tuple(bytes((0x80 | op, n)) for n in range(126))
    for op in (WSMsgType.TEXT, WSMsgType.BINARY)
}
# The last message framed, per opcode: (message, header + message). A fan-out hands the
# same bytes object to every subscriber's writer, and one-message frames are flushed
# back to back, so the frame is built once per publication, not once per subscriber.
_last_framed: dict[int, tuple[bytes, bytes]] = {
    op: (b"", b"") for op in (WSMsgType.TEXT, WSMsgType.BINARY)
}

# How long a close of ours waits for the peer's close frame before dropping the socket:
# Centrifugo's closeFrameWait.
CLOSE_TIMEOUT = 5.0

# Centrifugo's message size limit when the configured one is 0.
DEFAULT_MESSAGE_SIZE_LIMIT = 65536

# Server preference order, as in Centrifugo's upgrader.
SUBPROTOCOLS = ("centrifuge-json", "centrifuge-protobuf")


class WebSocketTransport:
    """`write_now` frames a message and writes it synchronously to the socket (RFC 6455
    §5.2 server frame: FIN, opcode, length, no mask), which is what aiohttp's
    `send_frame` does for uncompressed frames minus the coroutine. Connections that
    negotiated permessage-deflate use `DeflateWebSocketTransport`."""

    name = "websocket"
    unidirectional = False
    disconnect_push = False  # the close frame carries code and reason

    __slots__ = (
        "_ws",
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
        ws: web.WebSocketResponse,
        sock: asyncio.Transport,
        codec: Codec,
        *,
        write_timeout: float = 0.0,
    ) -> None:
        self._ws = ws
        self._sock = sock  # the connection's asyncio transport (prepared response)
        self.codec = codec
        self.write_timeout = write_timeout  # seconds; 0: no limit
        self.closing = False  # we started the closing handshake
        self._opcode = WSMsgType.TEXT if codec is JSON else WSMsgType.BINARY
        self._first = 0x80 | int(self._opcode)  # FIN + opcode
        self._short = _SHORT_HEADERS[self._opcode]

    def write_now(self, frame: bytes) -> int:
        sock = self._sock
        # After aiohttp started a closing handshake no data frame may follow the close.
        if self._ws.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        last, framed = _last_framed[self._opcode]
        if frame is not last:
            n = len(frame)
            if n < 126:
                framed = self._short[n] + frame
            elif n < 65536:
                framed = _HEADER_16(self._first, 126, n) + frame
            else:  # no copy of a big payload: header and payload written apart
                sock.write(_HEADER_64(self._first, 127, n))
                sock.write(frame)
                return sock.get_write_buffer_size()
            _last_framed[self._opcode] = (frame, framed)
        sock.write(framed)
        return sock.get_write_buffer_size()

    def unsent(self) -> int:
        return self._sock.get_write_buffer_size()

    async def write(self, frame: bytes) -> None:
        self.write_now(frame)

    async def close(self, disconnect: Disconnect) -> None:
        # WebSocket close reasons are limited to 123 bytes.
        self.closing = True
        message = disconnect.reason.encode()[:123]
        if not isinstance(self._ws, web.WebSocketResponse):
            # The lean path's connection (websocket_lean.py) bounds its own close.
            await self._ws.close(
                code=disconnect.code & 0xFFFF, message=message, drain=False
            )  # uint16, as Centrifugo
            return
        await close_bounded(self._ws, self._sock, disconnect.code, message, self.write_timeout)


class DeflateWebSocketTransport(WebSocketTransport):
    """permessage-deflate: each frame compressed at the configured level (or not, up to
    `compression_min_size`) and written whole, synchronously (app/transports/deflate.py)."""

    __slots__ = ("_deflater",)

    def __init__(
        self,
        ws: web.WebSocketResponse,
        sock: asyncio.Transport,
        codec: Codec,
        deflater: Deflater,
        *,
        write_timeout: float = 0.0,
    ) -> None:
        super().__init__(ws, sock, codec, write_timeout=write_timeout)
        self._deflater = deflater

    def write_now(self, frame: bytes) -> int:
        sock = self._sock
        if self._ws.closed or sock.is_closing():
            raise ConnectionResetError("websocket is closing")
        sock.write(self._deflater.frame(frame, self._opcode))
        return sock.get_write_buffer_size()


async def close_bounded(
    ws: web.WebSocketResponse,
    sock: asyncio.Transport,
    code: int,
    message: bytes,
    write_timeout: float,
) -> None:
    """aiohttp's closing handshake with a peer that may not read: no drain (a slow
    client's backlog must not hold the close up); a close frame that has not reached the
    kernel within `write_timeout` drops the socket; so does a peer that does not answer
    within the response's timeout (aiohttp would close it gracefully, which waits for the
    peer to read everything first, forever)."""

    def stuck() -> None:
        if sock.get_write_buffer_size():
            closing.abort(sock)

    guard = None
    if write_timeout > 0:
        guard = asyncio.get_running_loop().call_later(write_timeout, stuck)
    try:
        await ws.close(code=code & 0xFFFF, message=message, drain=False)  # uint16, as Centrifugo
    finally:
        if guard is not None:
            guard.cancel()
    if ws.close_code == WSCloseCode.ABNORMAL_CLOSURE:
        closing.abort(sock)  # the peer never answered: drop what it left
    else:
        closing.release(sock, write_timeout)


def message_size_limit(configured: int) -> int:
    """Centrifugo's `websocket.message_size_limit`: 0 (or less) means its default 64 KB."""
    return configured if configured > 0 else DEFAULT_MESSAGE_SIZE_LIMIT


def refuse_bad_key(request: web.Request) -> web.Response | None:
    """400 for a Sec-WebSocket-Key that is not ASCII, before aiohttp's handshake sees it:
    its b64decode raises ValueError there (HTTP 500 and a traceback). Centrifugo answers
    400 to a malformed key; aiohttp answers the other malformed keys 400 itself."""
    if request.headers.get("Sec-WebSocket-Key", "").isascii():
        return None
    log.info("bad Sec-WebSocket-Key from %s", request.remote)
    return web.Response(status=400, text="bad Sec-WebSocket-Key")


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Same rule as Centrifugo: no Origin header passes; otherwise a glob must match."""
    if not origin:
        return True
    origin = origin.lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in allowed)


def select_subprotocol(headers: MultiMapping[str]) -> str | None:
    """The first of our sub-protocols that the client offers (server preference)."""
    values = headers.getall("Sec-WebSocket-Protocol", ())
    if not values:
        return None
    offered = {p.strip() for h in values for p in h.split(",")}
    for p in SUBPROTOCOLS:
        if p in offered:
            return p
    return None


def select_codec(query: Mapping[str, str], subprotocol: str | None) -> Codec:
    if (
        subprotocol == "centrifuge-protobuf"
        or query.get("format") == "protobuf"
        or query.get("cf_protocol") == "protobuf"
    ):
        return PROTOBUF
    return JSON


def _release_http_parser(request: web.Request) -> None:
    """Drop aiohttp's HTTP request parser once the upgrade is done (~1 KB per idle
    connection, issue 7). From then on aiohttp feeds bytes to the WebSocket reader only;
    every remaining use of the HTTP parser in its protocol checks for None (it is what
    connection_lost leaves behind)."""
    proto = request.protocol
    if getattr(proto, "_upgraded", False) and getattr(proto, "_payload_parser", None):
        proto._parser = None  # type: ignore[attr-defined]


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    refused = admission.refuse(node)
    if refused is not None:
        return refused
    if not origin_allowed(request.headers.get("Origin"), cfg.client.allowed_origins):
        log.info("request Origin %r is not allowed", request.headers.get("Origin"))
        return web.Response(status=403, text="Invalid origin")
    bad = refuse_bad_key(request)
    if bad is not None:
        return bad
    subprotocol = select_subprotocol(request.headers)
    wcfg = cfg.websocket
    window_bits, notakeover = deflate.offered(request.headers) if wcfg.compression else (0, False)
    size_limit = message_size_limit(wcfg.message_size_limit)
    ws = web.WebSocketResponse(
        protocols=(subprotocol,) if subprotocol else (),
        # aiohttp refuses a message of exactly max_msg_size; Centrifugo allows it.
        max_msg_size=deflate.max_message_size(size_limit, wcfg.decompressed_message_size_limit)
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
    transport: WebSocketTransport
    if ws.compress:
        deflater = Deflater(
            wcfg.compression_level, ws.compress, notakeover, wcfg.compression_min_size
        )
        transport = DeflateWebSocketTransport(
            ws,
            sock,  # type: ignore[arg-type]
            codec,
            deflater,
            write_timeout=wcfg.write_timeout,
        )
    else:
        transport = WebSocketTransport(
            ws,
            sock,  # type: ignore[arg-type]
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
            data = None  # type: ignore[assignment]
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
            # (our own close bounds itself, in WebSocketTransport.close).
            closing.release(sock, cfg.websocket.write_timeout)
    return ws
