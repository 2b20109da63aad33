"""Writer + WebSocketTransport over real loopback sockets (aiohttp server in this process).

The synchronous path (WebSocket `write_now`) and the async path (a transport with only an
async `write`) share the batching contract: messages queued in one loop turn leave as one
frame joined by the codec's separator, or as frames of at most 16 messages when more are
queued (centrifuge's defaultMaxMessagesInFrame).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import WSMsgType, web

from app import writer
from app.errors import DISCONNECT_SLOW, DISCONNECT_WRITE_ERROR, Disconnect
from app.models import Publication
from app.protocol.gen import client_pb2
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF
from app.transports.websocket.connection import AiohttpConnection
from app.transports.websocket.deflate import Deflater
from app.transports.websocket.transport import DeflateWebSocketTransport, WebSocketTransport
from app.writer import Writer

Handler = Callable[[web.WebSocketResponse, WebSocketTransport], Awaitable[None]]


@dataclass
class Server:
    url: str
    handler: Handler | None = None
    done: asyncio.Queue[BaseException | None] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(url="")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress="deflate" in request.query)
        await ws.prepare(request)
        codec = PROTOBUF if request.query.get("format") == "protobuf" else JSON
        assert request.transport is not None
        # As the app's handler: frames are deflated when the client negotiated it.
        transport: WebSocketTransport
        conn = AiohttpConnection(ws, request.transport, 0.0)
        if ws.compress:
            deflater = Deflater(1, ws.compress, False, 0)
            transport = DeflateWebSocketTransport(conn, request.transport, codec, deflater)
        else:
            transport = WebSocketTransport(conn, request.transport, codec)
        try:
            assert srv.handler is not None
            await srv.handler(ws, transport)
        except BaseException as e:  # reported to the test, which re-raises it
            srv.done.put_nowait(e)
            raise
        srv.done.put_nowait(None)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}/ws"
    yield srv
    await runner.cleanup()


async def finished(srv: Server) -> None:
    exc = await asyncio.wait_for(srv.done.get(), 10)
    if exc is not None:
        raise exc


async def first_message(server: Server, query: str = "", **connect: Any) -> aiohttp.WSMessage:
    """Connects, returns the first message the handler sends, closes, and waits until the
    handler finished (re-raising its failure)."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(server.url + query, **connect) as ws,
    ):
        msg = await ws.receive(timeout=5)
        await ws.close()
    await finished(server)
    return msg


class Errors(list[Disconnect]):
    """on_error callback that records what it was given."""

    def __call__(self, d: Disconnect) -> None:
        self.append(d)


async def next_turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_one_frame_per_loop_turn(server: Server) -> None:
    errors = Errors()
    tasks_while_idle: list[int] = []

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, errors)
        tasks_while_idle.append(len(asyncio.all_tasks()))
        for m in (b'{"a":1}', b'{"b":2}', b'{"c":3}'):
            w.enqueue(m)
        await next_turns()
        w.enqueue(b'{"d":4}')
        await next_turns()
        # Flushed synchronously: no task was created for this connection.
        tasks_while_idle.append(len(asyncio.all_tasks()))
        await ws.receive()  # until the client closes

    server.handler = handler
    async with aiohttp.ClientSession() as s, s.ws_connect(server.url) as ws:
        first = await ws.receive(timeout=5)
        second = await ws.receive(timeout=5)
        await ws.close()
    await finished(server)
    assert (first.type, first.data) == (WSMsgType.TEXT, '{"a":1}\n{"b":2}\n{"c":3}')
    assert (second.type, second.data) == (WSMsgType.TEXT, '{"d":4}')
    assert tasks_while_idle[0] == tasks_while_idle[1]
    assert errors == []


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 65537, 300_000])
async def test_frame_lengths(server: Server, size: int) -> None:
    payload = base64.b64encode(os.urandom(size))[:size]

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        w.enqueue(payload)
        await ws.receive()

    server.handler = handler
    msg = await first_message(server)
    assert msg.type is WSMsgType.TEXT
    assert msg.data == payload.decode()


async def test_protobuf_frames_are_binary(server: Server) -> None:
    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        w.enqueue(b"\x02\x08\x01")
        w.enqueue(b"\x01\x00")
        await ws.receive()

    server.handler = handler
    msg = await first_message(server, "?format=protobuf")
    # Protobuf messages are length-delimited, so the separator is empty.
    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x02\x08\x01\x01\x00")


async def test_permessage_deflate_frames_reach_an_aiohttp_client(server: Server) -> None:
    kinds: list[str] = []

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        kinds.append(type(transport).__name__)
        w = Writer(transport, 1 << 20, Errors())
        w.enqueue(b'{"z":"' + b"z" * 1000 + b'"}')
        w.enqueue(b'{"y":1}')
        await ws.receive()

    server.handler = handler
    msg = await first_message(server, "?deflate", compress=15)
    assert kinds == ["DeflateWebSocketTransport"]
    assert msg.data == '{"z":"' + "z" * 1000 + '"}\n{"y":1}'


async def test_close_sends_queued_data_before_the_close_frame(server: Server) -> None:
    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        w.enqueue(b'{"last":1}')
        w.enqueue(b'{"last":2}')
        await w.close()
        w.enqueue(b'{"after":"close"}')  # dropped
        await transport.close(Disconnect(3001, "shutdown"))

    server.handler = handler
    async with aiohttp.ClientSession() as s, s.ws_connect(server.url) as ws:
        data = await ws.receive(timeout=5)
        close = await ws.receive(timeout=5)
    await finished(server)
    assert data.data == '{"last":1}\n{"last":2}'
    assert close.type is WSMsgType.CLOSE
    assert (close.data, close.extra) == (3001, "shutdown")


async def test_write_after_the_peer_left_is_a_write_error(server: Server) -> None:
    errors = Errors()

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, errors)
        msg = await ws.receive()  # the client's close: aiohttp answers it and closes
        assert msg.type is WSMsgType.CLOSE
        w.enqueue(b'{"too":"late"}')
        await next_turns()
        w.enqueue(b'{"ignored":1}')  # a failed writer stays closed
        await next_turns()

    server.handler = handler
    async with aiohttp.ClientSession() as s, s.ws_connect(server.url) as ws:
        await ws.close()
    await finished(server)
    assert [e.code for e in errors] == [DISCONNECT_WRITE_ERROR]


async def test_a_client_that_does_not_read_is_disconnected_as_slow(server: Server) -> None:
    errors = Errors()
    writes = 0

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        nonlocal writes
        w = Writer(transport, 256 * 1024, errors)
        chunk = b"x" * 100_000
        # The kernel's socket buffers take a few MB first; then the transport's own
        # buffer grows past max_size and the writer gives up on the client.
        while not errors and writes < 2000:
            w.enqueue(chunk)
            writes += 1
            await next_turns(1)
        w.enqueue(b"more")  # nothing after the failure
        await next_turns()

    server.handler = handler
    # A hand-made upgrade and then no reads at all (aiohttp's client would read).
    port = yarl.URL(server.url).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    await finished(server)
    writer.close()
    assert [e.code for e in errors] == [DISCONNECT_SLOW]
    assert writes < 2000


async def test_oversized_batch_in_one_turn_is_slow(server: Server) -> None:
    errors = Errors()

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1000, errors)
        w.enqueue(b"x" * 600)
        w.enqueue(b"y" * 600)  # 1200 queued in this turn > 1000
        assert [e.code for e in errors] == [DISCONNECT_SLOW]
        # The disconnect push of stream transports still goes out after an overflow.
        w.reopen_for_last()
        w.enqueue(b'{"disconnect":{}}')
        await w.close()
        await ws.receive()

    server.handler = handler
    msg = await first_message(server)
    assert msg.data == '{"disconnect":{}}'


class StreamTransport:
    """A transport with only an async write (like SSE or HTTP streaming), over a real
    socket pair; `gate` holds writes up so that the test controls when they finish."""

    name = "http_stream"
    codec = JSON
    unidirectional = True
    disconnect_push = True

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.gate = asyncio.Event()
        self.gate.set()
        self.writes = 0

    async def write(self, frame: bytes) -> None:
        await self.gate.wait()
        self.writes += 1
        self.writer.write(len(frame).to_bytes(4, "big") + frame)
        await self.writer.drain()

    async def close(self, disconnect: Disconnect) -> None:
        self.writer.close()


@pytest.fixture
async def stream_pair() -> AsyncIterator[tuple[StreamTransport, asyncio.StreamReader]]:
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait((r, w))

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, server_writer = await accepted.get()
    yield StreamTransport(server_writer), reader
    writer.close()
    server_writer.close()
    srv.close()
    await srv.wait_closed()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "big")
    return await reader.readexactly(n)


async def test_async_transport_batches_and_needs_no_idle_task(
    stream_pair: tuple[StreamTransport, asyncio.StreamReader],
) -> None:
    transport, reader = stream_pair
    w = Writer(transport, 1 << 20, Errors())
    transport.gate.clear()
    w.enqueue(b"1")
    w.enqueue(b"2")
    await next_turns()
    # The first batch is in flight (held by the gate); these wait and join one frame.
    w.enqueue(b"3")
    await next_turns()
    w.enqueue(b"4")
    transport.gate.set()
    assert await read_frame(reader) == b"1\n2"
    assert await read_frame(reader) == b"3\n4"
    await next_turns()
    assert w._task is None  # idle again: no task left behind
    assert transport.writes == 2


async def test_async_transport_close_drains_then_times_out(
    stream_pair: tuple[StreamTransport, asyncio.StreamReader],
) -> None:
    transport, reader = stream_pair
    w = Writer(transport, 1 << 20, Errors())
    w.enqueue(b"bye")
    await w.close()
    assert await read_frame(reader) == b"bye"

    transport.gate.clear()  # a write that never finishes is cancelled at the timeout
    w2 = Writer(transport, 1 << 20, Errors())
    w2.enqueue(b"stuck")
    await asyncio.wait_for(w2.close(timeout=0.05), 5)
    assert w2._task is None
    assert transport.writes == 1


async def test_async_transport_write_error(
    stream_pair: tuple[StreamTransport, asyncio.StreamReader],
) -> None:
    transport, _ = stream_pair
    errors = Errors()

    async def broken(frame: bytes) -> None:
        raise ConnectionResetError("gone")

    transport.write = broken  # type: ignore[method-assign]
    w = Writer(transport, 1 << 20, errors)
    w.enqueue(b"x")
    await next_turns(5)
    assert [e.code for e in errors] == [DISCONNECT_WRITE_ERROR]


# --- frames of at most MAX_MESSAGES_IN_FRAME messages (centrifuge writer.go) ---


async def received(server: Server, n: int, query: str = "", **connect: Any) -> list[Any]:
    """The data of the first `n` WebSocket messages the handler sends."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(server.url + query, **connect) as ws,
    ):
        msgs = [await ws.receive(timeout=5) for _ in range(n)]
        await ws.close()
    await finished(server)
    return [m.data for m in msgs]


def json_messages(k: int) -> list[bytes]:
    return [b'{"n":%d}' % i for i in range(k)]


def test_the_cap_is_centrifuges_default() -> None:
    assert writer.MAX_MESSAGES_IN_FRAME == writer.DEFAULT_MAX_MESSAGES_IN_FRAME == 16


@pytest.mark.parametrize("query", ["", "?deflate"])
async def test_seventeen_queued_leave_as_sixteen_and_one(server: Server, query: str) -> None:
    errors = Errors()

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, errors)
        for m in json_messages(17):
            w.enqueue(m)
        await ws.receive()

    server.handler = handler
    compress = {"compress": 15} if query else {}
    first, second = await received(server, 2, query, **compress)
    # Each frame is newline-joined JSON on its own, and nothing is lost or reordered.
    assert first == "\n".join(m.decode() for m in json_messages(17)[:16])
    assert second == '{"n":16}'
    assert errors == []


async def test_protobuf_frames_are_each_length_delimited(server: Server) -> None:
    pushes = [
        PROTOBUF.encode_pub_push("ch", Publication(data=b"\x00" * i, offset=i + 1))
        for i in range(40)
    ]

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        for p in pushes:
            w.enqueue(p)
        await ws.receive()

    server.handler = handler
    frames = await received(server, 3, "?format=protobuf")
    offsets: list[list[int]] = []
    for frame in frames:
        # A frame decodes whole into varint-prefixed Replies, ending on a message boundary.
        pos, got = 0, []
        while pos < len(frame):
            size, shift = 0, 0
            while True:
                b = frame[pos]
                pos += 1
                size |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            reply = client_pb2.Reply.FromString(frame[pos : pos + size])
            pos += size
            assert reply.push.pub.data == b"\x00" * (reply.push.pub.offset - 1)
            got.append(reply.push.pub.offset)
        assert pos == len(frame)
        offsets.append(got)
    assert offsets == [list(range(1, 17)), list(range(17, 33)), list(range(33, 41))]


@pytest.mark.parametrize(("cap", "frames"), [(1, 17), (-1, 1)])
async def test_the_bench_override(
    server: Server, monkeypatch: pytest.MonkeyPatch, cap: int, frames: int
) -> None:
    # What CENTRIFUGO_PY_BENCH_MAX_MESSAGES_IN_FRAME sets at import.
    monkeypatch.setattr(writer, "MAX_MESSAGES_IN_FRAME", cap)

    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        for m in json_messages(17):
            w.enqueue(m)
        await ws.receive()

    server.handler = handler
    data = await received(server, frames)
    assert "\n".join(data) == "\n".join(m.decode() for m in json_messages(17))


@pytest.mark.parametrize(
    ("raw", "cap"),
    [(None, 16), ("", 16), ("0", 16), ("1", 1), ("4", 4), ("-1", -1), ("-2", 16), ("x", 16)],
)
def test_bench_override_values(raw: str | None, cap: int) -> None:
    assert writer._max_messages_in_frame(raw) == cap


async def test_close_writes_the_rest_as_one_frame(server: Server) -> None:
    # writer.go's close(flushRemaining) hands every remaining item to one WriteMany.
    async def handler(ws: web.WebSocketResponse, transport: WebSocketTransport) -> None:
        w = Writer(transport, 1 << 20, Errors())
        for m in json_messages(20):
            w.enqueue(m)
        await w.close()
        await ws.receive()

    server.handler = handler
    (data,) = await received(server, 1)
    assert data == "\n".join(m.decode() for m in json_messages(20))


async def test_async_transport_writes_frames_of_sixteen(
    stream_pair: tuple[StreamTransport, asyncio.StreamReader],
) -> None:
    transport, reader = stream_pair
    w = Writer(transport, 1 << 20, Errors())
    for i in range(33):
        w.enqueue(b"%d" % i)
    frames = [await read_frame(reader) for _ in range(3)]
    assert frames == [
        b"\n".join(b"%d" % i for i in range(0, 16)),
        b"\n".join(b"%d" % i for i in range(16, 32)),
        b"32",
    ]
    assert transport.writes == 3
