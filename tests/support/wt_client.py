"""A WebTransport client on aioquic's HTTP/3 client, speaking Centrifugo's framing as
centrifuge-js's transport_webtransport.ts does: extended CONNECT (`:protocol webtransport`),
one bidirectional stream it opens, JSON commands each followed by "\\n" (replies read line by
line) or Protobuf commands and replies varint-length-delimited.

`open_session(port, path, ca=...)` yields a `WtClient` once the CONNECT is answered
(`status`); `send_json` / `send_commands` / `send_raw` write to the stream (opened on first
use), `next_json` / `next_reply` await the next message (pings answered as SDKs do unless
`pong=False`), `closed` awaits the end of the session: the CLOSE_WEBTRANSPORT_SESSION
capsule's (code, reason), or None when it ended without one. `close()` closes the session
as a browser does on `transport.close()`.

aioquic's H3Connection parses what arrives on a client-opened WebTransport stream as HTTP/3
frames; the data on our stream is raw, so its QUIC events are taken here before the
H3Connection sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from app.protocol.gen import client_pb2 as pb

CLOSE_WEBTRANSPORT_SESSION = 0x2843
_PING = object()  # a ping the reader answered: restarts a reader's silence timeout


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.session_id = -1
        self.stream_id = -1
        self.data = asyncio.Queue[bytes | None]()
        self.capsules = b""
        self.ended: asyncio.Future[tuple[int, str] | None] = (
            asyncio.get_running_loop().create_future()
        )

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
            if event.data:
                self.data.put_nowait(event.data)
            if event.end_stream:
                self.data.put_nowait(None)
            return
        if isinstance(event, StreamReset) and event.stream_id == self.stream_id:
            self.data.put_nowait(None)
            return
        if isinstance(event, ConnectionTerminated):
            self.data.put_nowait(None)
            self._end(None)
            if not self.status.done():
                self.status.set_exception(ConnectionError(event.reason_phrase))
            return
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived) and e.stream_id == self.session_id:
                headers = dict(e.headers)
                if not self.status.done():
                    self.status.set_result(int(headers[b":status"]))
            elif isinstance(e, DataReceived) and e.stream_id == self.session_id:
                self.capsules += e.data
                if e.stream_ended:
                    self._end(_close_capsule(self.capsules))

    def _end(self, value: tuple[int, str] | None) -> None:
        if not self.ended.done():
            self.ended.set_result(value)


def _close_capsule(data: bytes) -> tuple[int, str] | None:
    buf = Buffer(data=data)
    while not buf.eof():
        kind = buf.pull_uint_var()
        body = buf.pull_bytes(buf.pull_uint_var())
        if kind == CLOSE_WEBTRANSPORT_SESSION:
            return int.from_bytes(body[:4], "big"), body[4:].decode()
    return None


class WtClient:
    """One session's stream as an SDK sees it. A background reader cuts the stream into
    messages; with `pong` (the default) it answers the server's pings itself (an empty JSON
    object or an empty Protobuf Reply) and keeps them out of the message queue, otherwise
    they are queued like any message."""

    def __init__(self, proto: _Protocol, protobuf: bool, pong: bool) -> None:
        self._proto = proto
        self._protobuf = protobuf
        self._pong = pong
        self._messages: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._wants_pong = False
        self.status = 0
        self.pings = 0

    @property
    def stream_id(self) -> int:
        return self._proto.stream_id

    def send_raw(self, data: bytes, end: bool = False) -> None:
        p = self._proto
        if p.stream_id < 0:
            p.stream_id = p.h3.create_webtransport_stream(p.session_id)
            self._reader = asyncio.get_running_loop().create_task(self._read())
        p._quic.send_stream_data(p.stream_id, data, end)
        p.transmit()

    def send_json(self, *commands: dict[str, Any]) -> None:
        """centrifuge-js: commands joined by "\\n", plus one "\\n"."""
        self.send_raw(b"\n".join(orjson.dumps(c) for c in commands) + b"\n")

    def send_commands(self, *commands: pb.Command) -> None:
        out = b""
        for c in commands:
            body = c.SerializeToString()
            out += _varint(len(body)) + body
        self.send_raw(out)

    async def _read(self) -> None:
        buf = b""
        while True:
            chunk = await self._proto.data.get()
            if chunk is None:
                self._messages.put_nowait(None)
                return
            buf += chunk
            while True:
                if self._protobuf:
                    length, used = _read_varint(buf)
                    if not used or len(buf) < used + length:
                        break
                    body, buf = buf[used : used + length], buf[used + length :]
                    msg: Any = pb.Reply.FromString(body)
                    ping = not body
                else:
                    if b"\n" not in buf:
                        break
                    line, buf = buf.split(b"\n", 1)
                    msg = orjson.loads(line)
                    ping = msg == {}
                if self._protobuf and msg.HasField("connect"):
                    self._wants_pong = msg.connect.pong
                elif not self._protobuf and "connect" in msg:
                    self._wants_pong = bool(msg["connect"].get("pong"))
                if ping:
                    self.pings += 1
                    if self._pong:
                        if self._wants_pong:  # the connect reply's `pong`, as SDKs read it
                            self.send_raw(b"\x00" if self._protobuf else b"{}\n")
                        msg = _PING
                self._messages.put_nowait(msg)

    async def _next(self, timeout: float) -> Any:
        """The next message; `timeout` bounds the silence: a ping answered meanwhile
        starts it again (an SDK's liveness check)."""
        while True:
            msg = await asyncio.wait_for(self._messages.get(), timeout)
            if msg is None:
                self._messages.put_nowait(None)  # stays at end of stream
                raise EOFError("stream ended")
            if msg is not _PING:
                return msg

    async def next_json(self, timeout: float = 5.0) -> dict[str, Any]:
        return cast(dict[str, Any], await self._next(timeout))

    async def next_reply(self, timeout: float = 5.0) -> pb.Reply:
        return cast(pb.Reply, await self._next(timeout))

    async def closed(self, timeout: float = 5.0) -> tuple[int, str] | None:
        """The session's end: (code, reason) of the server's close capsule, or None."""
        return await asyncio.wait_for(asyncio.shield(self._proto.ended), timeout)

    def send_capsule(self, kind: int, value: bytes) -> None:
        """A capsule on the CONNECT stream (Chromium sends a GREASE one after its request)."""
        p = self._proto
        p.h3.send_data(
            p.session_id, encode_uint_var(kind) + encode_uint_var(len(value)) + value, False
        )
        p.transmit()

    def close(self) -> None:
        """As a browser's `WebTransport.close()`: the CONNECT stream finished."""
        p = self._proto
        with contextlib.suppress(Exception):
            p.h3.send_data(p.session_id, b"", end_stream=True)
            p.transmit()

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes) -> tuple[int, int]:
    """(value, bytes used), or (0, 0) when incomplete."""
    result = shift = 0
    for i, b in enumerate(buf[:10]):
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i + 1
        shift += 7
    return 0, 0


@contextlib.asynccontextmanager
async def open_session(
    port: int,
    path: str = "/connection/webtransport",
    *,
    ca: Path,
    origin: str | None = None,
    protocol: str = "webtransport",
    pong: bool = True,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
) -> AsyncIterator[WtClient]:
    """A QUIC connection to `host:port` and one extended CONNECT to `path`; the client's
    `status` is the answer's."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(H3_ALPN),
        max_datagram_frame_size=65536,
        server_name="localhost",
    )
    config.load_verify_locations(cafile=str(ca))
    async with connect(host, port, configuration=config, create_protocol=_Protocol) as conn:
        proto = cast(_Protocol, conn)
        proto.session_id = proto._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", protocol.encode()),
            (b":scheme", b"https"),
            (b":authority", f"localhost:{port}".encode()),
            (b":path", path.encode()),
        ]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        proto.h3.send_headers(proto.session_id, headers)
        proto.transmit()
        client = WtClient(proto, "cf_protocol=protobuf" in path, pong)
        client.status = await asyncio.wait_for(proto.status, timeout)
        try:
            yield client
        finally:
            client.stop()


__all__ = ["WtClient", "open_session"]
