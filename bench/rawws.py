"""A raw WebSocket client for the bench stages that hold many idle or listening connections
(`bench.spread`, `bench.delta`): the upgrade, then every server frame to `on_frame`.

The load generator's `WsClient` (bench/load.py) keeps its own tuned parser: it counts
messages without splitting them, on the hot path of the fan-out figures.
"""

from __future__ import annotations

import asyncio
import base64
import os


def upgrade_request(host: str, port: int, path: str = "/connection/websocket") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()


class RawWsClient(asyncio.Protocol):
    """Sends the upgrade; on 101 calls `on_open`, then `on_frame(opcode, payload, head_len)`
    for each server frame (unmasked, never fragmented by the server). Anything but 101 goes
    to `on_refused` with the response head."""

    def __init__(self, host: str, port: int) -> None:
        self.head = upgrade_request(host, port)
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    # --- for subclasses

    def on_open(self) -> None:
        raise NotImplementedError

    def on_frame(self, opcode: int, payload: bytes, head_len: int) -> None:
        raise NotImplementedError

    def on_refused(self, head: bytes) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.head)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.on_refused(self.buf[:200])
                return
            self.upgraded = True
            self.buf = self.buf[end + 4 :]
            self.on_open()
        buf, pos = self.buf, 0
        while len(buf) - pos >= 2:
            ln = buf[pos + 1] & 127
            start = pos + 2 + (2 if ln == 126 else 8 if ln == 127 else 0)
            if len(buf) < start:
                break
            if ln >= 126:
                ln = int.from_bytes(buf[pos + 2 : start], "big")
            if len(buf) < start + ln:
                break
            self.on_frame(buf[pos] & 15, buf[start : start + ln], start - pos)
            pos = start + ln
        self.buf = buf[pos:]
