"""WebSocket permessage-deflate as Centrifugo configures it (app/transports/deflate.py):
`compression_level`, `compression_min_size` and `decompressed_message_size_limit` on the
bidirectional and the unidirectional endpoint.

Raw sockets read the server's frames off the wire (the RSV1 bit says whether a message
was compressed; its payload is compared with zlib's output at the configured level), and
centrifuge-python (the `websockets` library negotiates permessage-deflate by default)
checks that an SDK reads a stream of compressed and uncompressed messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from centrifuge import Client

from tests.support.sdk import SubEvents

from .helpers import ServerHandle, start_server

MIN_SIZE = 300
LEVEL = 9
CONFIG: dict[str, Any] = {
    "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    "websocket": {
        "compression": True,
        "compression_level": LEVEL,
        "compression_min_size": MIN_SIZE,
        "message_size_limit": 1000,
        "decompressed_message_size_limit": 5000,
    },
    "uni_websocket": {
        "enabled": True,
        "compression": True,
        "compression_level": LEVEL,
        "compression_min_size": MIN_SIZE,
    },
}
TAIL = b"\x00\x00\xff\xff"
WORDS = [f"w{i}x" for i in range(40)]


def text(n_words: int, seed: int) -> str:
    """Text that deflates differently at levels 1 and 9 (repeated words, random order)."""
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n_words))


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerHandle]:
    handle = start_server(CONFIG)
    yield handle
    handle.stop()


class Wire:
    """A WebSocket client on a raw socket that offers permessage-deflate."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head  # the 101's head
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    @classmethod
    async def open(cls, port: int, path: str) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"permessage-deflate" in head.lower(), head
        return cls(reader, writer, head)

    async def send(self, message: bytes, compress: bool = False) -> None:
        first = 0x81
        if compress:
            message = self.deflate.compress(message) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            message = message.removesuffix(TAIL)
            first |= 0x40
        self.send_frame(first, message)

    def send_frame(self, first: int, message: bytes) -> None:
        """One masked client frame with the given first byte (FIN, RSV1, opcode)."""
        n = len(message)
        if n < 126:
            head = bytes((first, 0x80 | n))
        elif n < 65536:
            head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
        self.writer.write(head + mask + masked)

    async def frame(self) -> tuple[int, bool, bytes]:
        """(opcode, RSV1, payload as sent) of the next server frame."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 5)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return b0 & 0x0F, bool(b0 & 0x40), await self.reader.readexactly(n)

    def close(self) -> None:
        self.writer.close()


def deflated(message: bytes, level: int) -> bytes:
    """The first message of a fresh deflate stream at `level`, as RFC 7692 sends it."""
    z = zlib.compressobj(level, zlib.DEFLATED, -15)
    return (z.compress(message) + z.flush(zlib.Z_SYNC_FLUSH)).removesuffix(TAIL)


def inflate_all(payloads: list[bytes]) -> list[bytes]:
    z = zlib.decompressobj(-15)
    return [z.decompress(p + TAIL) for p in payloads]


async def test_short_messages_go_uncompressed_long_ones_at_the_configured_level(
    srv: ServerHandle,
) -> None:
    ws = await Wire.open(srv.port, "/connection/websocket")
    try:
        await ws.send(json.dumps({"id": 1, "connect": {"token": srv.token("u")}}).encode())
        _, rsv1, reply = await ws.frame()
        assert len(reply) <= MIN_SIZE and not rsv1  # the connect reply: under the minimum
        assert json.loads(reply)["id"] == 1
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat"}}).encode())
        assert json.loads((await ws.frame())[2])["id"] == 2
        data = {"text": text(200, seed=1)}
        await srv.api_async("publish", {"channel": "chat", "data": data})
        _, rsv1, payload = await ws.frame()
        assert rsv1
        push = zlib.decompressobj(-15).decompress(payload + TAIL)
        assert json.loads(push)["push"]["pub"]["data"] == data
        # The first compressed message of the connection: zlib's own output at LEVEL.
        assert deflated(push, 1) != deflated(push, LEVEL), "the data must tell levels apart"
        assert payload == deflated(push, LEVEL)
    finally:
        ws.close()


async def test_bidirectional_compression_is_served_by_the_lean_path(srv: ServerHandle) -> None:
    # The lean server's 101 carries no Server header; aiohttp's (uni_websocket) does.
    ws = await Wire.open(srv.port, "/connection/websocket")
    ws.close()
    assert b"server:" not in ws.head.lower(), ws.head
    uni = await Wire.open(srv.port, "/connection/uni_websocket")
    uni.close()
    assert b"server:" in uni.head.lower(), uni.head


async def test_fragmented_compressed_message_and_context_takeover(srv: ServerHandle) -> None:
    # RFC 7692 §6.2: RSV1 on the first fragment only, the message inflated whole; the
    # client's window is taken over from one message to the next (no client reset).
    ws = await Wire.open(srv.port, "/connection/websocket")
    try:
        await ws.send(json.dumps({"id": 1, "connect": {"token": srv.token("u")}}).encode())
        await ws.frame()
        for i in (2, 3):
            rpc = json.dumps({"id": i, "rpc": {"method": "m", "data": text(50, seed=i)}})
            z = ws.deflate.compress(rpc.encode()) + ws.deflate.flush(zlib.Z_SYNC_FLUSH)
            z = z.removesuffix(TAIL)
            half = len(z) // 2
            ws.send_frame(0x40 | 0x01, z[:half])  # no FIN, RSV1, text
            ws.send_frame(0x89, b"p")  # a ping between the fragments
            ws.send_frame(0x80, z[half:])  # FIN, continuation
            op, _, pong = await ws.frame()
            assert (op, pong) == (10, b"p")
            _, _, reply = await ws.frame()
            assert json.loads(reply)["id"] == i
        # RSV1 on a continuation frame breaks the protocol: 1002.
        ws.send_frame(0x40 | 0x01, ws.deflate.compress(b"{}") + ws.deflate.flush(zlib.Z_SYNC_FLUSH))
        ws.send_frame(0x80 | 0x40, b"x")
        op, _, payload = await ws.frame()
        assert (op, int.from_bytes(payload[:2], "big")) == (8, 1002)
    finally:
        ws.close()


async def test_decompressed_message_size_limit_closes_1009(srv: ServerHandle) -> None:
    ws = await Wire.open(srv.port, "/connection/websocket")
    try:
        await ws.send(json.dumps({"id": 1, "connect": {"token": srv.token("u")}}).encode())
        await ws.frame()
        # 4,000 bytes inflated from a few hundred on the wire: over message_size_limit
        # (1,000) uncompressed, under decompressed_message_size_limit (5,000).
        rpc = {"id": 2, "rpc": {"method": "m", "data": {"pad": "a" * 3940}}}
        message = json.dumps(rpc).encode()
        assert 1000 < len(message) <= 5000
        await ws.send(message, compress=True)
        _, _, reply = await ws.frame()
        assert json.loads(reply)["id"] == 2  # answered (an error: no RPC handler)
        over = json.dumps({"id": 3, "rpc": {"method": "m", "data": {"pad": "a" * 5000}}})
        await ws.send(over.encode(), compress=True)
        op, _, payload = await ws.frame()
        assert (op, int.from_bytes(payload[:2], "big")) == (8, 1009)
    finally:
        ws.close()


async def test_uni_websocket_compresses_at_the_level_over_the_minimum(srv: ServerHandle) -> None:
    ws = await Wire.open(srv.port, "/connection/uni_websocket")
    try:
        # A server-side subscription to "chat" from the token's channels claim.
        await ws.send(json.dumps({"token": srv.token("u", channels=["chat"])}).encode())
        _, rsv1, connect_push = await ws.frame()
        assert not rsv1 and len(connect_push) <= MIN_SIZE
        assert "chat" in json.loads(connect_push)["connect"]["subs"]
        data = {"text": text(200, seed=2)}
        await srv.api_async("publish", {"channel": "chat", "data": data})
        _, rsv1, payload = await ws.frame()
        assert rsv1
        push = zlib.decompressobj(-15).decompress(payload + TAIL)
        assert json.loads(push)["pub"]["data"] == data
        assert payload == deflated(push, LEVEL)  # the connection's first compressed one
    finally:
        ws.close()


async def test_sdk_reads_compressed_and_uncompressed_messages_in_turn(srv: ServerHandle) -> None:
    client = Client(srv.ws_url, token=srv.token("u"))
    events = SubEvents()
    sub = client.new_subscription("chat", events)
    await client.connect()
    await sub.subscribe()
    try:
        sent = [
            {"text": text(n, seed=n)} for n in (3, 150, 2, 300, 150, 1, 400)
        ]  # short and long in turn: context taken over across the long ones
        for data in sent:
            await srv.api_async("publish", {"channel": "chat", "data": data})
        got = [(await events.next("publication", timeout=5)).pub.data for _ in sent]
        assert got == sent
    finally:
        await client.disconnect()
