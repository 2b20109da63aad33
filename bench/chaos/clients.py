"""The soak's clients: centrifuge-python subscribers that record everything, and a raw
WebSocket slow consumer that never reads.

All SDK clients live in the soak's one event loop (200 of them cost a few % of a core at the
soak's rates). Each has one subscription; the SDK recovers by itself (the namespace forces
recovery, so every subscribe reply carries a stream position and every resubscribe sends it
back). The timeline each records is what `accounting` reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections import Counter

from centrifuge import (  # type: ignore[import-untyped]
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
    SubscriptionState,
    UnsubscribedContext,
)

from bench.chaos.accounting import Event, Received, Subscribed
from bench.chaos.publisher import BIG


class _ClientEvents(ClientEventHandler):
    def __init__(self, rec: SdkSubscriber) -> None:
        self.rec = rec

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.rec.counts["connecting"] += 1

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.rec.counts["connected"] += 1

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        # Called only when the client stops for good (a terminal code, or disconnect()).
        self.rec.terminal = f"disconnected {ctx.code} {ctx.reason}"


class _SubEvents(SubscriptionEventHandler):
    def __init__(self, rec: SdkSubscriber) -> None:
        self.rec = rec

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        pos = ctx.stream_position
        now = time.monotonic()
        self.rec.counts["subscribed"] += 1
        if not ctx.recovered:
            self.rec.reset_at = now
        self.rec.timeline.append(
            Subscribed(
                epoch=pos.epoch if pos is not None else "",
                offset=pos.offset if pos is not None else 0,
                recovered=ctx.recovered,
                was_recovering=ctx.was_recovering,
                at=now,
            )
        )

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        # Terminal: a resubscribe code (insufficient state, ...) goes to on_subscribing.
        self.rec.terminal = f"unsubscribed {ctx.code} {ctx.reason}"

    async def on_publication(self, ctx: PublicationContext) -> None:
        data = ctx.pub.data
        pub_id = data.get("id", -1) if isinstance(data, dict) else -1
        if pub_id == -1 or data.get("big") != BIG:
            self.rec.corrupted += 1
            if not self.rec.corrupted_example:
                self.rec.corrupted_example = repr(data)[:200]
        self.rec.got.add(pub_id)
        self.rec.timeline.append(Received(pub_id, ctx.pub.offset))


class SdkSubscriber:
    """One centrifuge-python Client with one Subscription, recording what the SDK reports.

    `timeline`: Subscribed / Received events in arrival order (see accounting); `got`: the
    ids received; `reset_at`: when the last `recovered=false` subscribe reply came;
    `terminal`: set when the client or its subscription stopped for good."""

    def __init__(self, name: str, url: str, token: str, channel: str) -> None:
        self.name = name
        self.channel = channel
        self.timeline: list[Event] = []
        self.got: set[int] = set()
        self.reset_at = 0.0
        self.corrupted = 0  # publications whose data did not arrive as published
        self.corrupted_example = ""
        self.counts: Counter[str] = Counter()  # connecting, connected, subscribed
        self.terminal: str = ""
        self.client = Client(
            url,
            events=_ClientEvents(self),
            token=token,
            proxy=None,
            min_reconnect_delay=0.1,
            max_reconnect_delay=2.0,
        )
        self.sub = self.client.new_subscription(
            channel, events=_SubEvents(self), min_resubscribe_delay=0.1, max_resubscribe_delay=2.0
        )

    def has_seen(self, pub_id: int, acked_at: float) -> bool:
        """Received `pub_id`, or was told after it was acknowledged that its stream
        restarted (a `recovered=false` reply: what came before is excused)."""
        return pub_id in self.got or self.reset_at > acked_at

    @property
    def ready(self) -> bool:
        return (
            self.client.state == ClientState.CONNECTED
            and self.sub.state == SubscriptionState.SUBSCRIBED
        )

    async def start(self) -> None:
        await self.client.connect()
        await self.sub.subscribe()

    def drop_tcp(self) -> bool:
        """Reset the client's TCP connection: no WebSocket close, no FIN (SO_LINGER 0 makes
        the close an RST). The SDK sees its socket die and reconnects; the server sees a
        reset. The SDK has no public accessor for its socket: `_conn` is its websockets
        connection (as tests/e2e/redis_e2e_helpers.sdk_local_port reads it)."""
        conn = self.client._conn
        if conn is None:
            return False
        transport = conn.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return True

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.client.disconnect()


# ------------------------------------------------------------------------------ slow consumer


class SlowConsumer:
    """A raw JSON-protocol WebSocket client that subscribes and then never reads.

    Its receive buffer is shrunk before connecting (SO_RCVBUF), so the server's send buffer
    and then its per-connection queue fill after a few MB: the server must disconnect it
    (3008, or no pong) and let the socket go even though the peer never reads or closes.
    """

    RCVBUF = 4096
    # The server serves plain upgrades on its lean WebSocket path and leaves request heads
    # it does not sniff (a header name with an underscore) to aiohttp's: both must let go.
    ROUTES = {"lean": "", "aiohttp": "X_Route: aiohttp\r\n"}

    def __init__(self, port: int, path: str, token: str, channel: str, route: str) -> None:
        self.port = port
        self.path = path
        self.route = route
        self.token = token
        self.channel = channel
        self.local_port = 0
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, timeout: float = 10.0) -> None:
        """Connect, upgrade, connect + subscribe, wait for the subscribe reply; then stop
        reading."""
        async with asyncio.timeout(timeout):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            self._writer = writer
            self.local_port = sock.getsockname()[1]
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"{self.ROUTES[self.route]}\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"upgrade refused: {head[:80]!r}")
            cmds = [
                {"id": 1, "connect": {"token": self.token}},
                {"id": 2, "subscribe": {"channel": self.channel}},
            ]
            writer.write(_frame("\n".join(json.dumps(c) for c in cmds).encode()))
            while True:
                for line in (await _read_frame(reader)).split(b"\n"):
                    if not line.strip():
                        continue
                    reply = json.loads(line)
                    if "error" in reply:
                        raise ConnectionError(f"slow consumer refused: {reply}")
                    if reply.get("id") == 2:
                        # From here on nothing is read: the transport stops pulling bytes
                        # from the kernel, whose small buffer fills at once.
                        transport = writer.transport
                        assert isinstance(transport, asyncio.Transport)
                        transport.pause_reading()
                        return

    def close(self) -> None:
        if self._writer is not None:
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._writer.transport.abort()
            self._writer = None


def _frame(payload: bytes) -> bytes:
    """A masked client TEXT frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """One unmasked server frame's payload (control frames included: callers skip them)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    data = await reader.readexactly(n)
    if b0 & 0x0F == 0x8:
        raise ConnectionError(f"closed by the server: {data[:2].hex()} {data[2:]!r}")
    return data


class SdkErrors(logging.Handler):
    """Counts the SDK's error-level log records (a protocol error, an exception in a
    background task) and keeps the first few, for the report; nothing is printed."""

    def __init__(self, keep: int = 5) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(record.getMessage()[:300])

    def install(self) -> None:
        logger = logging.getLogger("centrifuge")
        logger.addHandler(self)
        logger.propagate = False  # each lost connection is logged; 200 clients x each fault
