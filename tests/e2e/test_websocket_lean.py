"""The WebSocket endpoint at frame level, over raw sockets (issue 7's lean upgrade path).

Plain upgrades are served without aiohttp's request handling; these tests hold the
server to RFC 6455 there: heads and frames split anyhow, fragmentation, ping/pong, the
closing handshake both ways, and 1002/1007 for broken frames, each closing only the
offending connection; permessage-deflate is negotiated there too. Requests the lean path
does not take (not an upgrade, odd heads) must still be answered by aiohttp as before.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from .helpers import ServerHandle

CONFIG: dict[str, Any] = {"client": {"insecure": True}, "websocket": {"message_size_limit": 4096}}
COMPRESSED: dict[str, Any] = {"client": {"insecure": True}, "websocket": {"compression": True}}
DISABLED: dict[str, Any] = {"client": {"insecure": True}, "websocket": {"disabled": True}}

CONNECT = json.dumps({"id": 1, "connect": {}}).encode()


@pytest.fixture(scope="module")
def servers(server_factory: Any) -> dict[str, ServerHandle]:
    return {
        "plain": server_factory(CONFIG),
        "compressed": server_factory(COMPRESSED),
        "disabled": server_factory(DISABLED),
    }


@pytest.fixture(scope="module")
def srv(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["plain"]


def frame(
    payload: bytes, opcode: int = 1, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame (RFC 6455 §5.2)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if mask else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"  # fixed: the test ids hold these frames
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload). Server frames are never masked."""

        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "server frames must not be masked"
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def reply(self) -> dict[str, Any]:
        op, payload = await self.recv()
        assert op == 1, (op, payload)
        return json.loads(payload.splitlines()[0])

    async def closed_with(self) -> int:
        """Expect a close frame, answer it, and see the server drop the socket."""
        op, payload = await self.recv()
        assert op == 8, (op, payload)
        await self.send(frame(payload[:2], opcode=8))
        assert await asyncio.wait_for(self.reader.read(), 5) == b""
        return int.from_bytes(payload[:2], "big")


def upgrade_head(key: str, path: str = "/connection/websocket", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


@asynccontextmanager
async def peer(srv: ServerHandle, pieces: int = 1, after_head: bytes = b"") -> AsyncIterator[Peer]:
    """A raw connection, upgraded; the head is written in `pieces` writes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    p = Peer(reader, writer)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        data = upgrade_head(key) + after_head
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            await p.send(data[i : i + step])
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 101 "), status
        assert b"aiohttp" not in status  # answered by the lean path, not aiohttp's Server
        yield p
    finally:
        writer.close()


async def test_head_in_many_writes_then_connect(srv: ServerHandle) -> None:
    async with peer(srv, pieces=7) as p:
        await p.send(frame(CONNECT))
        assert "client" in (await p.reply())["connect"]


async def test_command_sent_with_the_head(srv: ServerHandle) -> None:
    async with peer(srv, after_head=frame(CONNECT)) as p:
        assert "client" in (await p.reply())["connect"]


async def test_frame_split_byte_by_byte(srv: ServerHandle) -> None:
    async with peer(srv) as p:
        for b in frame(CONNECT):
            await p.send(bytes((b,)))
        assert "client" in (await p.reply())["connect"]


async def test_fragmented_command_with_a_ping_in_between(srv: ServerHandle) -> None:
    async with peer(srv) as p:
        third = len(CONNECT) // 3
        await p.send(frame(CONNECT[:third], opcode=1, fin=False))
        await p.send(frame(CONNECT[third : 2 * third], opcode=0, fin=False))
        await p.send(frame(b"are you there", opcode=9))
        await p.send(frame(CONNECT[2 * third :], opcode=0, fin=True))
        assert await p.recv() == (10, b"are you there")  # pong, same payload
        assert "client" in (await p.reply())["connect"]


async def test_peer_close_is_answered_and_the_socket_dropped(srv: ServerHandle) -> None:
    async with peer(srv) as p:
        await p.send(frame(CONNECT))
        await p.reply()
        await p.send(frame((1000).to_bytes(2, "big") + b"bye", opcode=8))
        op, payload = await p.recv()
        assert (op, payload[:2]) == (8, (1000).to_bytes(2, "big"))
        assert await asyncio.wait_for(p.reader.read(), 5) == b""


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(CONNECT, mask=False), 1002),
        (frame(CONNECT, rsv=0x40), 1002),  # compressed bit without the extension
        (frame(CONNECT, opcode=0), 1002),  # continuation of nothing
        (frame(b"x", opcode=3), 1002),  # reserved opcode
        (frame(b"x" * 126, opcode=9), 1002),  # control frame over 125 bytes
        (frame(b"x", opcode=9, fin=False), 1002),  # fragmented control frame
        (frame(b"\xff\xfe"), 1007),  # text that is not UTF-8
        (frame(b"x" * 4097), 1009),  # over websocket.message_size_limit
    ],
    ids=[
        "unmasked",
        "rsv1",
        "lone-continuation",
        "reserved-opcode",
        "long-control",
        "fragmented-control",
        "bad-utf8",
        "oversize",
    ],
)
async def test_broken_frames_close_only_that_connection(
    srv: ServerHandle, bad: bytes, code: int
) -> None:
    async with peer(srv) as bystander, peer(srv) as p:
        await bystander.send(frame(CONNECT))
        await bystander.reply()
        await p.send(bad)
        assert await p.closed_with() == code
        # The other connection is untouched.
        await bystander.send(
            frame(json.dumps({"id": 2, "presence_stats": {"channel": "x"}}).encode())
        )
        assert (await bystander.reply())["id"] == 2


async def test_message_of_exactly_the_limit_in_fragments_is_accepted(srv: ServerHandle) -> None:
    async with peer(srv) as p:
        await p.send(frame(CONNECT))
        await p.reply()
        body = json.dumps({"id": 2, "publish": {"channel": "c", "data": {}}}).encode()
        msg = body + b" " * (4096 - len(body))  # JSON allows trailing whitespace
        await p.send(frame(msg[:1000], fin=False) + frame(msg[1000:], opcode=0))
        assert (await p.reply())["id"] == 2  # answered, not closed with 1009


async def test_server_close_waits_for_the_peer_answer(srv: ServerHandle) -> None:
    async with peer(srv) as p:
        await p.send(frame(b'{"id":1,"bogus":{}}'))
        assert await p.closed_with() == 3501


async def test_not_an_upgrade_is_answered_by_aiohttp(srv: ServerHandle) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{srv.url}/connection/websocket") as resp:
            assert resp.status == 400
        # Other routes on the same keep-alive connection still work.
        async with s.get(f"{srv.url}/health") as resp:
            assert resp.status == 200


async def test_compression_negotiated_when_enabled(servers: dict[str, ServerHandle]) -> None:
    srv = servers["compressed"]
    async with aiohttp.ClientSession() as s:
        for compress in (15, 0):
            async with s.ws_connect(srv.ws_url, compress=compress) as ws:
                assert ws.compress == compress
                await ws.send_str(CONNECT.decode())
                reply = json.loads(await ws.receive_str(timeout=5))
                assert "client" in reply["connect"]


@pytest.mark.parametrize(
    "trigger", [frame(b"\xff"), frame(b'{"id":1,"bogus":{}}')], ids=["1007", "3501"]
)
async def test_close_answer_behind_a_data_frame_ends_the_connection(
    srv: ServerHandle, trigger: bytes
) -> None:
    async with peer(srv) as p:
        await p.send(trigger)
        op, payload = await p.recv()
        assert op == 8
        # Our answer arrives behind a late data frame, in one write: the server must still
        # find it and drop the socket now, not after its 10 s wait for an answer.
        await p.send(frame(CONNECT) + frame(payload[:2], opcode=8))
        assert await asyncio.wait_for(p.reader.read(), 5) == b""


async def test_disabled_websocket_is_not_served(servers: dict[str, ServerHandle]) -> None:
    srv = servers["disabled"]
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(upgrade_head(key))
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 404 "), status
    finally:
        writer.close()
