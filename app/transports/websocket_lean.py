"""The bidirectional WebSocket endpoint without aiohttp's request machinery (issue 7).

aiohttp spends ~0.3 ms of CPU to accept one WebSocket: HTTP parser, Request, router,
middlewares, a handler task, WebSocketResponse with its writer, reader and queue. That
alone capped connect + subscribe near 2.5k/s per worker. Here a small protocol reads the
first request of each connection itself. A plain upgrade to `websocket.handler_prefix`
(GET, HTTP/1.1, the WebSocket headers, no body, no compression offered or compression
off) is answered right here with the 101 and served by `LeanWebSocket`, or with the 503
of a refused admission (a draining node, the connection limits: app/transports/admission.py).
Anything else (other paths, the HTTP API, compression, a rejected origin, odd or malformed
requests) is handed unchanged to aiohttp's own protocol, which answers as it always did.

The WebSocket side speaks RFC 6455 as a server: masked client frames, fragmentation,
ping -> pong, the closing handshake, 1002/1007/1009 for protocol errors, invalid text
and oversize messages (over `websocket.message_size_limit`, as aiohttp refused them for
us before). Frames go to the Client in order; an idle connection holds no task.

Closing is bounded as on aiohttp's path (app/transports/websocket.py): a close frame
that does not reach the kernel within `websocket.write_timeout`, or that the peer does
not answer within CLOSE_TIMEOUT, drops the socket with what it holds (RST,
app/transports/closing.py); after a complete handshake the socket is closed once our
bytes are out, and dropped if they are not out within the write timeout.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import hashlib
import logging
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from app.client import Client
from app.node import NODE_KEY, Node
from app.timers import CoarseTimer
from app.transports import admission, closing
from app.transports.websocket import (
    CLOSE_TIMEOUT,
    WebSocketTransport,
    message_size_limit,
    origin_allowed,
    select_codec,
    select_subprotocol,
)

log = logging.getLogger("centrifugo.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_END = b"\r\n\r\n"
MAX_HEAD = 16384  # larger request heads go to aiohttp (its limits answer them)
# Messages waiting for the Client before the socket stops being read.
INBOX_HIGH = 64
INBOX_LOW = 16

# Close codes a peer may send (RFC 6455 §7.4): the defined ones and 3000-4999.
_PEER_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class ProtocolError(Exception):
    """A peer's frame broke RFC 6455: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Upgrade:
    """The parts of an accepted upgrade request the connection needs."""

    __slots__ = ("headers", "query", "accept", "subprotocol")

    def __init__(self, headers: CIMultiDict[str], query: dict[str, str], accept: bytes) -> None:
        self.headers = headers
        self.query = query
        self.accept = accept
        self.subprotocol = select_subprotocol(headers)


def parse_upgrade(head: bytes, path: bytes, compression: bool) -> Upgrade | None:
    """The upgrade in a request head (up to, without, the blank line), or None when the
    request is anything but a plain WebSocket upgrade to `path` that we serve here."""
    line_end = head.find(b"\r\n")
    parts = (head if line_end < 0 else head[:line_end]).split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    target, _, query = parts[1].partition(b"?")
    if target != path:
        return None
    pairs = []
    if line_end >= 0:
        for line in head[line_end + 2 :].decode("utf-8", "surrogateescape").split("\r\n"):
            name, sep, value = line.partition(":")
            value = value.strip(" \t")
            # Names of letters, digits and dashes, printable values: anything else
            # (obs-fold, a space before the colon, control characters, rarer token
            # characters) is left to aiohttp's parser.
            if not (sep and name.isascii() and name.replace("-", "").isalnum()):
                return None
            if not value.isprintable():
                return None
            pairs.append((name, value))
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    if (
        headers.get("Upgrade", "").strip().lower() != "websocket"
        or "upgrade" not in headers.get("Connection", "").lower()
        or headers.get("Sec-WebSocket-Version", "").strip() != "13"
        or "Content-Length" in headers
        or "Transfer-Encoding" in headers
    ):
        return None
    if compression and "permessage-deflate" in ",".join(
        headers.getall("Sec-WebSocket-Extensions", ())
    ):
        return None  # aiohttp negotiates and runs the compressor
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    accept = binascii.b2a_base64(hashlib.sha1(key.encode() + _GUID).digest(), newline=False)
    args: dict[str, str] = {}
    if query:
        for k, v in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
            args.setdefault(k, v)  # the first value, as MultiDict.get gives
    return Upgrade(headers, args, accept)


def handshake_response(upgrade: Upgrade) -> bytes:
    out = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + upgrade.accept + b"\r\n"
    ]
    if upgrade.subprotocol:
        out.append(b"Sec-WebSocket-Protocol: " + upgrade.subprotocol.encode() + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, done as one big-integer operation (C speed)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def close_frame(code: int, message: bytes = b"") -> bytes:
    # Disconnect codes are uint32 (a proxy may send any); the close frame holds 16 bits and
    # Centrifugo writes uint16(code), as here.
    payload = (code & 0xFFFF).to_bytes(2, "big") + message[:123]
    return bytes((0x80 | OP_CLOSE, len(payload))) + payload


_END = object()  # inbox marker: no more frames for the Client


class LeanWebSocket(asyncio.Protocol):
    """One accepted connection: sniffs its first request, then (for a plain upgrade) is the
    WebSocket; otherwise hands the connection to aiohttp's RequestHandler."""

    __slots__ = (
        "_server",
        "_sock",
        "_head",
        "_timer",
        "_ws",
        "_rbuf",
        "_frag_op",
        "_frag",
        "_frag_size",
        "_limit",
        "_client",
        "_inbox",
        "_task",
        "_paused",
        "_ended",
        "_finished",
        "_acked",
        "_peer_closed",
        "_ack",
        "_lost",
        "_released",
        "closed",
    )

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._sock: asyncio.Transport | None = None
        self._head = b""
        self._timer: CoarseTimer | None = None
        self._ws = False  # upgraded
        self._lost = False  # connection_lost was called: the socket is gone
        self.closed = False  # our close frame is out (or the socket is gone)

    # --------------------------------------------------------------- sniffing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = transport  # type: ignore[assignment]
        timeout = self._server.keepalive_timeout
        if timeout > 0:  # aiohttp also drops a connection that never sends a request
            self._timer = self._server.node.timers.call_later(timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._ws:
            self._feed(data)
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
        refused = admission.refusal(self._server.node)
        if refused is not None:
            self._refuse(refused)
            return
        self._start(upgrade, head[end + 4 :])

    def _refuse(self, reason: str) -> None:
        """503, as aiohttp's handler would answer; the connection ends after it."""
        self._cancel_timer()
        sock = self._sock
        assert sock is not None
        self._sock = None  # nothing more is read or answered on this connection
        sock.pause_reading()
        sock.write(admission.refusal_head(reason))
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

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        if not self._ws:
            return
        self.closed = True
        self._resolve_ack()
        self._push(_END)

    # ------------------------------------------------------------- WebSocket

    def _start(self, upgrade: Upgrade, tail: bytes) -> None:
        self._cancel_timer()
        sock = self._sock
        assert sock is not None
        sock.write(handshake_response(upgrade))
        self._ws = True
        self._rbuf = bytearray()
        self._frag_op = 0
        self._frag: list[bytes] = []
        self._frag_size = 0
        node = self._server.node
        self._limit = message_size_limit(node.config.websocket.message_size_limit)
        self._inbox: collections.deque[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._ended = False
        self._finished = False
        self._acked = False
        self._peer_closed = False
        self._released = False
        self._ack: asyncio.Future[None] | None = None
        codec = select_codec(upgrade.query, upgrade.subprotocol)
        transport = WebSocketTransport(
            self,  # type: ignore[arg-type]
            sock,
            codec,
            write_timeout=node.config.websocket.write_timeout,
        )
        self._client = Client(node, transport, headers=upgrade.headers)
        if tail:
            self._feed(tail)

    def _feed(self, data: bytes) -> None:
        buf = self._rbuf
        buf += data
        try:
            used = self._parse(buf)
        except ProtocolError as e:
            buf.clear()
            self._fail(e)
            return
        if used:
            del buf[:used]

    def _parse(self, buf: bytearray) -> int:
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
            payload = unmask(bytes(buf[start + 4 : end]), bytes(buf[start : start + 4]))
            pos = end
            self._frame(b0, payload)
            if self._peer_closed:
                return n  # nothing after the peer's close frame is read
        return pos

    def _frame(self, b0: int, payload: bytes) -> None:
        if b0 & 0x70:
            raise ProtocolError(1002, "reserved bits set")
        op = b0 & 0x0F
        fin = b0 & 0x80
        if op >= OP_CLOSE:
            if not fin or len(payload) > 125:
                raise ProtocolError(1002, "bad control frame")
            if op == OP_PING:
                if not self.closed and self._sock is not None:
                    self._sock.write(bytes((0x80 | OP_PONG, len(payload))) + payload)
            elif op == OP_CLOSE:
                self._peer_close(payload)
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
            self._frag.append(payload)
            self._frag_size += len(payload)
            return
        if self._frag_op:
            op = self._frag_op
            self._frag.append(payload)
            payload = b"".join(self._frag)
            self._frag_op = 0
            self._frag = []
            self._frag_size = 0
        if op == OP_TEXT:
            try:
                payload.decode()
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 text") from None
        if not self.closed:
            self._push(payload)

    def _peer_close(self, payload: bytes) -> None:
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
        self._peer_closed = True
        if self.closed:  # the answer to our close frame: the handshake is done
            self._resolve_ack()
            self._release()
        else:
            # The Client first gets the frames that came before; then we answer. A close
            # of ours sent meanwhile completes the handshake at once.
            self._acked = True
            self._ended = True
            self._push(_END)

    def _fail(self, e: ProtocolError) -> None:
        if self.closed:  # broken frames while waiting for the peer's close: stop here
            self._drop()
            return
        if e.code == 1009:
            log.info("client %s sent a message over websocket.message_size_limit", self._client.uid)
        else:
            log.info("client %s broke the WebSocket protocol: %s", self._client.uid, e)
        self._ended = True
        self._send_close(e.code, b"")
        self._arm_close_timeout()
        self._push(_END)

    # -------------------------------------------------- frames to the Client

    def _push(self, item: Any) -> None:
        # Once ended only the end marker is queued, and nothing once the end was handled.
        if self._finished or (self._ended and item is not _END):
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
        if done:
            self._ended = self._finished = True
            inbox.clear()
            if not self.closed:
                # The peer closed (or the connection dropped): answer as aiohttp did.
                self._send_close(1000, b"")
                self._release()
            await client.transport_closed()

    # ------------------------------------------------------------ closing

    def _send_close(self, code: int, message: bytes) -> None:
        self.closed = True
        sock = self._sock
        if sock is not None and not sock.is_closing():
            sock.write(close_frame(code, message))

    def _arm_close_timeout(self) -> None:
        if self._sock is not None and not self._acked:
            self._timer = self._server.node.timers.call_later(CLOSE_TIMEOUT, self._drop)

    def _release(self) -> None:
        """The closing handshake is complete (or the peer left): close the socket once our
        bytes are out, drop it if they are not out within the write timeout."""
        sock = self._sock
        if sock is None or self._lost or self._released:
            return
        self._released = True
        timeout = self._server.node.config.websocket.write_timeout
        closing.close_within(sock, timeout, self._server.loop)

    def _drop(self) -> None:
        """No complete closing handshake: drop the socket with what it holds (RST)."""
        sock = self._sock
        if sock is None or self._lost:
            return
        self._released = True
        closing.abort(sock)

    def _resolve_ack(self) -> None:
        self._acked = True
        self._cancel_timer()
        if self._ack is not None and not self._ack.done():
            self._ack.set_result(None)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = False) -> bool:
        """The close frame, then (like aiohttp's WebSocketResponse.close) wait a while for
        the peer's answer before dropping the socket. `drain` is accepted and ignored: a
        slow client's backlog must not hold the close up."""
        if self.closed:
            return False
        self._send_close(code, message)
        sock = self._sock
        if sock is None:
            return True
        if not self._acked:
            ack = self._ack = self._server.loop.create_future()
            wait = CLOSE_TIMEOUT
            write_timeout = self._server.node.config.websocket.write_timeout
            if 0 < write_timeout < CLOSE_TIMEOUT:
                # A close frame still in our buffer after the write timeout sits behind a
                # backlog the peer does not read: it will never be answered.
                await _wait(ack, write_timeout)
                wait = 0.0 if sock.get_write_buffer_size() else CLOSE_TIMEOUT - write_timeout
            await _wait(ack, wait)
        if self._peer_closed:
            self._release()
        else:
            self._drop()
        return True


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
        return self._aiohttp.requests_count  # type: ignore[no-any-return]

    def aiohttp_protocol(self) -> asyncio.Protocol:
        return self._aiohttp()  # type: ignore[no-any-return]

    def accept(self, head: bytes, sock: asyncio.Transport | None) -> Upgrade | None:
        """The upgrade, when it is one this path serves; None hands it to aiohttp (which
        then answers 403 or 404 as the handler decides). Admission comes after."""
        node = self.node
        cfg = node.config
        if sock is None or cfg.websocket.disabled:
            return None
        if self._internal_port and sock.get_extra_info("sockname")[1] == self._internal_port:
            return None
        upgrade = parse_upgrade(head, self._path, self._compression)
        if upgrade is None:
            return None
        if not origin_allowed(upgrade.headers.get("Origin"), cfg.client.allowed_origins):
            return None
        return upgrade
