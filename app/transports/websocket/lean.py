"""The bidirectional WebSocket endpoint without aiohttp's request machinery (issue 7).

aiohttp spends ~0.3 ms of CPU to accept one WebSocket: HTTP parser, Request, router,
middlewares, a handler task, WebSocketResponse with its writer, reader and queue. That
alone capped connect + subscribe near 2.5k/s per worker. Here a small protocol reads the
first request of each connection itself. A plain upgrade to `websocket.handler_prefix`
(GET, HTTP/1.1, the WebSocket headers, no body; permessage-deflate negotiated here when
`websocket.compression` is on) is answered right here with the 101 and served by
`LeanWebSocket`, or with the 503 or 403 of a refused admission (a draining node, the
connection limits, the Origin: app/transports/admission.py). Anything else (other paths,
the HTTP API, odd or malformed requests) is handed unchanged to aiohttp's own protocol,
which answers as it always did.

The WebSocket side speaks RFC 6455 as a server: masked client frames, fragmentation,
ping -> pong, the closing handshake, 1002/1007/1009 for protocol errors, invalid text
and oversize messages (over `websocket.message_size_limit`, as aiohttp refused them for
us before); the frames themselves are read by app/transports/websocket/frames.py, the
request head by handshake.py. Frames go to the Client in order; an idle connection holds
no task. Where a connection is in its life is one `Phase`.

Closing is bounded as on aiohttp's path (app/transports/websocket/connection.py): a close frame
that does not reach the kernel within `websocket.write_timeout`, or that the peer does
not answer within CLOSE_TIMEOUT, drops the socket with what it holds (RST,
app/transports/closing.py); after a complete handshake the socket is closed once our
bytes are out, and dropped if they are not out within the write timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from typing import TYPE_CHECKING, Any

from app.client import Client
from app.node import NODE_KEY, Node
from app.timers import CoarseTimer
from app.transports import admission, closing
from app.transports.websocket.connection import CLOSE_TIMEOUT, WebSocketConnection
from app.transports.websocket.deflate import Deflater, Inflater, lean_limits
from app.transports.websocket.frames import (
    FrameReader,
    FrameSink,
    ProtocolError,
    close_frame,
    message_size_limit,
    pong_frame,
)
from app.transports.websocket.handshake import (
    Upgrade,
    handshake_response,
    parse_upgrade,
    select_codec,
)
from app.transports.websocket.transport import DeflateWebSocketTransport, WebSocketTransport

log = logging.getLogger("centrifugo.websocket")

_HEAD_END = b"\r\n\r\n"
MAX_HEAD = 16384  # larger request heads go to aiohttp (its limits answer them)
# Messages waiting for the Client before the socket stops being read.
INBOX_HIGH = 64
INBOX_LOW = 16


class Phase(enum.Enum):
    """Where a lean connection is in its life. Before the upgrade: HEAD, then REFUSED or
    HANDED_OVER (both final for this object) or OPEN. The closing states of RFC 6455
    §7: CLOSE_RECEIVED when the peer's close frame came first, CLOSE_SENT when ours did;
    either leads to CLOSED, or to LOST when the socket goes (or we drop it) first."""

    HEAD = "reading the first request head"
    REFUSED = "answered 503; the socket closes after it"
    HANDED_OVER = "aiohttp's protocol has the socket"
    OPEN = "upgraded: frames both ways"
    # The Client still gets the frames that came before the peer's close; then we answer.
    CLOSE_RECEIVED = "the peer's close frame came first"
    # Waiting (CLOSE_TIMEOUT) for the peer's answer; its data frames are dropped.
    CLOSE_SENT = "our close frame is out"
    CLOSED = "released: the socket closes once our bytes are out"
    LOST = "the socket is gone, or we dropped it"


# Phases in which our close frame is out (or cannot be sent): no data frame may follow.
_CLOSED = frozenset((Phase.CLOSE_SENT, Phase.CLOSED, Phase.LOST))

_END = object()  # inbox marker: no more frames for the Client


class LeanWebSocket(asyncio.Protocol):
    """One accepted connection: sniffs its first request, then (for a plain upgrade) is the
    WebSocket and its `WebSocketConnection`; otherwise hands the connection to aiohttp's
    RequestHandler."""

    __slots__ = (
        "_server",
        "_sock",
        "_head",
        "_timer",
        "_phase",
        "_reader",
        "_client",
        "_inbox",
        "_task",
        "_paused",
        "_finished",
        "_ack",
        "closed",
    )

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._sock: asyncio.Transport | None = None
        self._head = b""
        self._timer: CoarseTimer | None = None
        self._phase = Phase.HEAD
        self._reader: FrameReader | None = None  # set by the upgrade
        # `_phase in _CLOSED`, kept beside it: the transport reads it on every write.
        self.closed = False

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        self.closed = phase in _CLOSED

    # --------------------------------------------------------------- sniffing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = transport  # type: ignore[assignment]
        timeout = self._server.keepalive_timeout
        if timeout > 0:  # aiohttp also drops a connection that never sends a request
            self._timer = self._server.node.timers.call_later(timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is not None:  # upgraded
            try:
                reader.feed(data, self)
            except ProtocolError as e:
                self._fail(e)
            return
        head = self._head + data if self._head else data
        prefix = self._server.sniff_prefix
        if not head.startswith(prefix[: len(head)]):
            self._hand_over(head)
            return
        end = head.find(_HEAD_END)
        if end < 0:
            if len(head) > MAX_HEAD:
                self._hand_over(head)
            else:
                self._head = head
            return
        upgrade = self._server.accept(head[:end], self._sock)
        if upgrade is None:
            self._hand_over(head)
            return
        self._head = b""
        # Only here, for the upgrades served here: what is handed over is admitted (once)
        # by aiohttp's handler.
        refused = admission.check(self._server.node, upgrade.headers.get("Origin"))
        if refused is not None:
            self._refuse(refused)
            return
        self._start(upgrade, head[end + 4 :])

    def _refuse(self, refused: admission.Refusal) -> None:
        """503 or 403, as aiohttp's handler would answer; the connection ends after it."""
        self._cancel_timer()
        sock = self._sock
        assert sock is not None
        self._sock = None  # nothing more is read or answered on this connection
        self._enter(Phase.REFUSED)
        sock.pause_reading()
        sock.write(refused.head())
        closing.release(sock, self._server.node.config.websocket.write_timeout)

    def _hand_over(self, data: bytes) -> None:
        """Not ours: aiohttp's protocol takes the connection from its first byte."""
        self._cancel_timer()
        sock = self._sock
        assert sock is not None
        handler = self._server.aiohttp_protocol()
        sock.set_protocol(handler)
        handler.connection_made(sock)
        handler.data_received(data)
        self._sock = None
        self._head = b""
        self._enter(Phase.HANDED_OVER)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        upgraded = self._reader is not None
        self._enter(Phase.LOST)
        if upgraded:
            self._resolve_ack()
            self._push(_END)

    # ------------------------------------------------------------- WebSocket

    def _start(self, upgrade: Upgrade, tail: bytes) -> None:
        self._cancel_timer()
        sock = self._sock
        assert sock is not None
        sock.write(handshake_response(upgrade))
        node = self._server.node
        wcfg = node.config.websocket
        self._enter(Phase.OPEN)
        size_limit = message_size_limit(wcfg.message_size_limit)
        if upgrade.window_bits:
            wire, inflated = lean_limits(size_limit, wcfg.decompressed_message_size_limit)
            self._reader = FrameReader(wire, Inflater(inflated))
        else:
            self._reader = FrameReader(size_limit)
        self._inbox: collections.deque[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False  # reading paused: the inbox is over INBOX_HIGH
        self._finished = False  # the Client was told the transport closed
        self._ack: asyncio.Future[None] | None = None  # our close() waits on it
        codec = select_codec(upgrade.query, upgrade.subprotocol)
        transport: WebSocketTransport
        if upgrade.window_bits:
            deflater = Deflater(
                wcfg.compression_level,
                upgrade.window_bits,
                upgrade.notakeover,
                wcfg.compression_min_size,
            )
            transport = DeflateWebSocketTransport(
                self, sock, codec, deflater, write_timeout=wcfg.write_timeout
            )
        else:
            transport = WebSocketTransport(self, sock, codec, write_timeout=wcfg.write_timeout)
        self._client = Client(node, transport, headers=upgrade.headers)
        if tail:
            self.data_received(tail)

    # The FrameReader's sink (frames.FrameSink): it calls these only until the peer's
    # close frame, so the phase is OPEN or CLOSE_SENT here.

    def on_message(self, payload: bytes) -> None:
        if self._phase is Phase.OPEN:  # after a close of ours, the peer's data is dropped
            self._push(payload)

    def on_ping(self, payload: bytes) -> None:
        if self._phase is Phase.OPEN:
            assert self._sock is not None
            self._sock.write(pong_frame(payload))

    def on_close(self, payload: bytes) -> None:
        if self._phase is Phase.CLOSE_SENT:  # the answer to our close: the handshake is done
            self._resolve_ack()
            self._release()
        else:
            # The Client first gets the frames that came before; then we answer. A close
            # of ours sent meanwhile completes the handshake at once.
            self._enter(Phase.CLOSE_RECEIVED)
            self._push(_END)

    def _fail(self, e: ProtocolError) -> None:
        if self.closed:  # broken frames while waiting for the peer's close: stop here
            self._drop()
            return
        if e.code == 1009:
            log.info(
                "client %s sent a message over websocket.%s",
                self._client.uid,
                "decompressed_message_size_limit"
                if self._reader is not None and self._reader.inflates
                else "message_size_limit",
            )
        else:
            log.info("client %s broke the WebSocket protocol: %s", self._client.uid, e)
        self._send_close(e.code, b"")
        self._arm_close_timeout()
        self._push(_END)

    # -------------------------------------------------- frames to the Client

    def _push(self, item: Any) -> None:
        # Nothing once the end was handled (data is pushed only while OPEN).
        if self._finished:
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = collections.deque()
        inbox.append(item)
        if self._task is None:
            self._task = self._server.loop.create_task(self._drain())
        if len(inbox) > INBOX_HIGH and not self._paused and self._sock is not None:
            self._paused = True
            self._sock.pause_reading()

    async def _drain(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        client = self._client
        done = False
        try:
            while inbox:
                item = inbox.popleft()
                if item is _END:
                    done = True
                    break
                try:
                    if not await client.handle_frame(item):
                        done = True
                        break
                except Exception:  # a bug must not leave the connection half alive
                    log.exception("client %s: handling a frame failed", client.uid)
                    done = True
                    break
                if self._paused and len(inbox) <= INBOX_LOW and self._sock is not None:
                    self._paused = False
                    self._sock.resume_reading()
        finally:
            self._task = None
            if not inbox and self._inbox is inbox:
                # Drained: the next frame gets a new deque (and task). An empty deque
                # kept for the connection's life was 760 bytes of it (tracemalloc).
                self._inbox = None
        if done:
            self._finished = True
            inbox.clear()
            if not self.closed:
                # The peer closed (or the connection dropped): answer as aiohttp did.
                self._send_close(1000, b"")
                self._release()
            await client.transport_closed()

    # ------------------------------------------------------------ closing

    def _send_close(self, code: int, message: bytes) -> None:
        self._enter(Phase.CLOSE_SENT)
        sock = self._sock
        if sock is not None and not sock.is_closing():
            sock.write(close_frame(code, message))

    def _arm_close_timeout(self) -> None:
        if self._sock is not None:
            self._timer = self._server.node.timers.call_later(CLOSE_TIMEOUT, self._drop)

    def _release(self) -> None:
        """The closing handshake is complete (or the peer left): close the socket once our
        bytes are out, drop it if they are not out within the write timeout."""
        sock = self._sock
        if sock is None or self._phase is Phase.LOST or self._phase is Phase.CLOSED:
            return
        self._enter(Phase.CLOSED)
        timeout = self._server.node.config.websocket.write_timeout
        closing.close_within(sock, timeout, self._server.loop)

    def _drop(self) -> None:
        """No complete closing handshake: drop the socket with what it holds (RST)."""
        sock = self._sock
        if sock is None or self._phase is Phase.LOST:
            return
        self._enter(Phase.LOST)
        closing.abort(sock)

    def _resolve_ack(self) -> None:
        """The peer's close frame came, or the socket is gone: our close waits no longer."""
        self._cancel_timer()
        if self._ack is not None and not self._ack.done():
            self._ack.set_result(None)

    async def close(self, code: int, message: bytes) -> None:
        """The close frame, then (like aiohttp's WebSocketResponse.close) wait a while for
        the peer's answer before dropping the socket. A slow client's backlog does not
        hold the close up (no drain)."""
        if self.closed:
            return
        answered = self._phase is Phase.CLOSE_RECEIVED
        self._send_close(code, message)
        sock = self._sock
        if sock is None:
            return
        if answered:  # the peer's close came first: the handshake is complete
            self._release()
            return
        ack = self._ack = self._server.loop.create_future()
        wait = CLOSE_TIMEOUT
        write_timeout = self._server.node.config.websocket.write_timeout
        if 0 < write_timeout < CLOSE_TIMEOUT:
            # A close frame still in our buffer after the write timeout sits behind a
            # backlog the peer does not read: it will never be answered.
            await _wait(ack, write_timeout)
            wait = 0.0 if sock.get_write_buffer_size() else CLOSE_TIMEOUT - write_timeout
        await _wait(ack, wait)
        if self._phase is Phase.CLOSE_SENT:  # no answer in time
            self._drop()


if TYPE_CHECKING:  # conformance, proved by mypy
    _: type[WebSocketConnection] = LeanWebSocket
    _sink: type[FrameSink] = LeanWebSocket


async def _wait(future: asyncio.Future[None], timeout: float) -> None:
    if timeout > 0 and not future.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)


class LeanServer:
    """Stands in for aiohttp's `web.Server` as the listeners' protocol factory: each
    connection starts as a LeanWebSocket; the shutdown calls go to aiohttp's Server."""

    def __init__(self, server: Any, app: Any, keepalive_timeout: float) -> None:
        self._aiohttp = server
        self.node: Node = app[NODE_KEY]
        self.loop = self.node.loop  # read per frame: kept here, one hop closer
        cfg = self.node.config
        self.keepalive_timeout = keepalive_timeout
        self._path = cfg.websocket.handler_prefix.encode()
        self.sniff_prefix = b"GET " + self._path
        self._compression = cfg.websocket.compression
        internal = cfg.http_server.internal_port
        self._internal_port = internal if internal and internal != cfg.http_server.port else 0

    def __call__(self) -> asyncio.Protocol:
        return LeanWebSocket(self)

    # What aiohttp's runner asks of its server besides making protocols. Forwarded by
    # name, not by __getattr__: a class with __getattr__ pays a slower lookup on every
    # attribute, and connections read this object's attributes several times each.
    def pre_shutdown(self) -> None:
        self._aiohttp.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        await self._aiohttp.shutdown(timeout)

    @property
    def connections(self) -> Any:
        return self._aiohttp.connections

    @property
    def requests_count(self) -> int:
        """HTTP requests aiohttp served (gunicorn's worker checks it against max_requests)."""
        return self._aiohttp.requests_count

    def aiohttp_protocol(self) -> asyncio.Protocol:
        return self._aiohttp()

    def accept(self, head: bytes, sock: asyncio.Transport | None) -> Upgrade | None:
        """The upgrade, when it is one this path serves; None hands it to aiohttp (which
        then answers as its handlers decide). Admission comes after."""
        node = self.node
        cfg = node.config
        if sock is None or cfg.websocket.disabled:
            return None
        if self._internal_port and sock.get_extra_info("sockname")[1] == self._internal_port:
            return None
        return parse_upgrade(head, self._path, self._compression)
