"""Load generator over WebTransport: aioquic HTTP/3 clients speaking Centrifugo's JSON framing.

Each client does what centrifuge-js's transport_webtransport.ts does: a QUIC connection, an
extended CONNECT (`:protocol webtransport`) to the WebTransport endpoint, one bidirectional
stream it opens, and on it `connect` + `subscribe` as newline-terminated JSON (one write).
From then on it only counts: messages are newline-terminated on the stream, so a chunk's
messages are `bytes.count(b"\\n")` (C speed, no JSON decoding) minus the server's pings (`{}`
lines, answered with `{}`). Every k-th connection (the probe process, as bench/load.py's) also
parses its messages for offset continuity and the publisher's timestamp (latency).

aioquic's H3Connection would parse what arrives on a client-opened WebTransport stream as
HTTP/3 frames; the data on that stream is raw, so its QUIC events are taken before the
H3Connection sees them (tests/support/wt_client.py does the same).

A session the server ends is counted by how it ended (`ends`: its stream finished, reset, the
QUIC connection closed) and by the code of the server's CLOSE_WEBTRANSPORT_SESSION capsule or
disconnect push (`close_codes`, e.g. 3009 write timeout).

Unlike a WebSocket client this one is not cheap: aioquic decrypts and parses every QUIC packet
in Python, so per delivery the load generator costs about what the server does. Run it in
several processes (`WtLoadGenerator`, driven over pipes exactly like bench/load.py's
`LoadGenerator`, which it extends: `connect_wt`, then its reset, collect, disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from bench.load import ConnSpec, Counters, LoadGenerator

_SETUP, _COUNT, _CLOSED = range(3)
PONG = b"{}\n"
# draft-ietf-webtrans-http3: the capsule that closes a session (32-bit code, then the reason).
CLOSE_WEBTRANSPORT_SESSION = 0x2843


@dataclass(frozen=True, slots=True)
class WtTarget:
    """A WebTransport endpoint and the CA file that verifies its certificate."""

    host: str
    port: int
    cafile: str
    path: str = "/connection/webtransport"


class WtConn(QuicConnectionProtocol):
    """One WebTransport session with one bidirectional stream; counts into the process's
    `Counters`."""

    def __init__(self, quic: QuicConnection, owner: WtWorker, spec: ConnSpec, sample: bool):
        super().__init__(quic)
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.owner = owner
        self.spec = spec
        self.sample = sample
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.state = _SETUP
        self.session_id = -1
        self.stream_id = -1
        self.buf = b""  # setup: unparsed bytes; sampled: the incomplete last line
        self.tail = b""  # the last 2 bytes of the previous chunk (a ping split in two)
        self.last_off = 0
        self.capsules = b""  # unparsed bytes of the CONNECT stream

    def start(self, target: WtTarget) -> None:
        """Sends the extended CONNECT (after the QUIC handshake)."""
        self.session_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", f"{target.host}:{target.port}".encode()),
            (b":path", target.path.encode()),
        ]
        self.h3.send_headers(self.session_id, headers)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
            if event.data:
                self._data(event.data)
            if event.end_stream:
                # The session stays open: the server closes it within a second with the
                # disconnect code in a CLOSE_WEBTRANSPORT_SESSION capsule (_capsules).
                self._lost("stream ended", shut=False)
            return
        if isinstance(event, StreamReset) and event.stream_id == self.stream_id:
            self._lost("stream reset")
            return
        if isinstance(event, ConnectionTerminated):
            self._lost(f"connection closed: {event.error_code:#x} {event.reason_phrase}")
            return
        for e in self.h3.handle_event(event):
            if isinstance(e, DataReceived) and e.stream_id == self.session_id:
                self._capsules(e.data)
            elif isinstance(e, HeadersReceived) and e.stream_id == self.session_id:
                status = dict(e.headers).get(b":status")
                if status != b"200":
                    self._fail(f"CONNECT answered {status!r}")
                    return
                self.stream_id = self.h3.create_webtransport_stream(self.session_id)
                s = self.spec
                setup = b"%s\n%s\n" % (
                    orjson.dumps({"id": 1, "connect": {"token": s.token, "name": "bench"}}),
                    orjson.dumps({"id": 2, "subscribe": {"channel": s.channel}}),
                )
                self._quic.send_stream_data(self.stream_id, setup)
                self.transmit()

    def _capsules(self, data: bytes) -> None:
        """Counts the code of the server's CLOSE_WEBTRANSPORT_SESSION capsule (the
        Centrifugo disconnect code of a session it ends)."""
        self.capsules += data
        buf = Buffer(data=self.capsules)
        try:
            while not buf.eof():
                kind = buf.pull_uint_var()
                body = buf.pull_bytes(buf.pull_uint_var())
                self.capsules = self.capsules[buf.tell() :]
                buf = Buffer(data=self.capsules)
                if kind == CLOSE_WEBTRANSPORT_SESSION and len(body) >= 4:
                    code = int.from_bytes(body[:4], "big")
                    codes = self.owner.close_codes
                    codes[code] = codes.get(code, 0) + 1
        except BufferReadError:
            return  # an incomplete capsule: the rest comes with the next data

    # --- receiving ---

    def _data(self, data: bytes) -> None:
        if self.state == _SETUP:
            self.buf += data
            while self.state == _SETUP and b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self._setup_reply(line)
            if self.state != _COUNT or not self.buf:
                return
            data, self.buf = self.buf, b""
        if self.state != _COUNT:
            return
        n = data.count(b"\n")
        # Publication data never holds "{}" (bench/publish.py), so these are the pings.
        pings = (self.tail + data).count(PONG) if b"{}" in self.tail + data else 0
        self.tail = data[-2:]
        if pings:
            self._quic.send_stream_data(self.stream_id, PONG * pings)
            self.transmit()
        c = self.owner.c
        c.pings += pings
        msgs = n - pings
        if b'{"disconnect"' in data:
            msgs -= self._disconnect_pushes(data)
        if self.sample:
            self._parse(data)
        if msgs:
            now = time.monotonic()
            c.last = now
            if not c.first:
                c.first = now
            c.msgs += msgs
            c.reads += 1
            c.bytes += len(data)

    def _disconnect_pushes(self, data: bytes) -> int:
        """Counts the codes of the disconnect pushes the server sends before it ends the
        stream (3009 write timeout, 3008 slow...); returns how many lines they were."""
        codes = self.owner.close_codes
        n = 0
        for line in data.split(b"\n"):
            if line.startswith(b'{"disconnect"'):
                code = orjson.loads(line)["disconnect"].get("code", 0)
                codes[code] = codes.get(code, 0) + 1
                n += 1
        return n

    def _setup_reply(self, line: bytes) -> None:
        if line == b"{}":
            self._quic.send_stream_data(self.stream_id, PONG)
            self.transmit()
            return
        reply = orjson.loads(line)
        if "error" in reply:
            self._fail(f"reply {reply}")
        elif reply.get("id") == 2:
            self.state = _COUNT
            if not self.ready.done():
                self.ready.set_result(None)

    def _parse(self, data: bytes) -> None:
        """Offsets and latency of a sampled connection's complete lines."""
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        c = self.owner.c
        now = time.monotonic()
        for line in lines:
            if line == b"{}":
                continue
            pub = orjson.loads(line).get("push", {}).get("pub")
            if pub is None:
                c.other += 1
                continue
            c.sampled += 1
            off = pub.get("offset", 0)
            if self.last_off:
                if off <= self.last_off:
                    c.dups += 1
                elif off > self.last_off + 1:
                    c.gaps += off - self.last_off - 1
            self.last_off = off
            c.lat.append(now - pub["data"]["ts"])

    # --- ending ---

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection {self.spec.idx}: {why}"))
        self.shut()

    def _lost(self, why: str, shut: bool = True) -> None:
        if self.state == _COUNT:
            self.owner.closed += 1
            ends = self.owner.ends
            ends[why] = ends.get(why, 0) + 1
        self.state = _CLOSED
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection {self.spec.idx}: {why}"))
        if shut:
            self.shut()

    def shut(self) -> None:
        """Closes the QUIC connection (the server ends the session and its client)."""
        self.state = _CLOSED
        with contextlib.suppress(Exception):
            self.close()


class WtWorker:
    """One load-generator process of WebTransport clients; the pipe protocol and the
    commands are those of bench/load.py's LoadWorker (connect, reset, collect, disconnect)."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.clients: list[WtConn] = []
        self.c = Counters()
        self.closed = 0
        self.close_codes: dict[int, int] = {}
        self.ends: dict[str, int] = {}  # how sessions ended while counting: count by cause

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "connect": self.connect,
            "reset": self.reset,
            "collect": self.collect,
            "disconnect": self.disconnect,
        }
        while True:
            cmd, arg = await loop.run_in_executor(None, self.pipe.recv)
            if cmd == "exit":
                await self.disconnect()
                self.pipe.send(("ok", None))
                return
            try:
                result = await commands[cmd](**arg)
            except Exception as e:  # reported to the runner, which aborts the run
                self.pipe.send(("error", f"{type(e).__name__}: {e}"))
            else:
                self.pipe.send(("ok", result))

    async def _open(self, spec: ConnSpec, target: WtTarget, sample: bool) -> WtConn:
        loop = asyncio.get_running_loop()
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(H3_ALPN),
            max_datagram_frame_size=65536,
            server_name=target.host,
            verify_mode=ssl.CERT_REQUIRED,
        )
        config.load_verify_locations(cafile=target.cafile)
        quic = QuicConnection(configuration=config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        _, proto = await loop.create_datagram_endpoint(
            lambda: WtConn(quic, self, spec, sample), sock=sock
        )
        assert isinstance(proto, WtConn)
        try:
            async with asyncio.timeout(60):
                proto.connect((target.host, target.port))
                await proto.wait_connected()
                proto.start(target)
                await proto.ready
        except BaseException:
            proto.shut()
            raise
        return proto

    async def connect(
        self,
        target: WtTarget,
        specs: list[ConnSpec],
        sample_every: int,
        concurrency: int,
        read_delay: float = 0.0,  # LoadGenerator's argument; every session is read eagerly
    ) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()

        async def one(spec: ConnSpec) -> None:
            async with sem:
                sample = sample_every > 0 and spec.idx % sample_every == 0
                self.clients.append(await self._open(spec, target, sample))

        await asyncio.gather(*(one(s) for s in specs))
        return {"connected": len(specs), "seconds": time.monotonic() - t0, "t1": time.monotonic()}

    async def reset(self) -> float:
        self.c = Counters()
        self.closed = 0
        self.close_codes = {}
        self.ends = {}
        for cl in self.clients:
            cl.last_off = 0
        return time.monotonic()

    async def collect(self, expected: int, idle: float, hard: float) -> dict[str, Any]:
        """Waits until `expected` messages arrived, or no progress for `idle` s, or `hard` s."""
        await self.c.wait_for(expected, idle, hard)
        # A stream has no WebSocket frames: a read is the unit messages arrive in.
        return {
            **self.c.report(self.closed, self.close_codes),
            "frames": self.c.reads,
            "ends": self.ends,
        }

    async def disconnect(self) -> int:
        n = 0
        for cl in self.clients:
            if cl.state != _CLOSED:
                n += 1
            cl.shut()
        await asyncio.gather(
            *(asyncio.wait_for(cl.wait_closed(), 2) for cl in self.clients),
            return_exceptions=True,
        )
        for cl in self.clients:
            if cl._transport is not None:
                cl._transport.close()
        self.clients = []
        return n


def wt_worker_main(pipe: Connection) -> None:
    """Entry point of a WebTransport load-generator process (uvloop when installed)."""
    worker = WtWorker(pipe)
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(worker.serve())
    else:
        uvloop.run(worker.serve())


class WtLoadGenerator(LoadGenerator):
    """bench/load.py's LoadGenerator with WebTransport processes: same commands, same split of
    connections (the sampled ones in a probe process of their own)."""

    def __init__(self, procs: int, sample_every: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        self.regular = procs
        self.sample_every = sample_every
        for _ in range(procs + (1 if sample_every > 0 else 0)):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=wt_worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def connect_wt(
        self, target: WtTarget, specs: list[ConnSpec], sample_every: int = 50, concurrency: int = 50
    ) -> float:
        """Opens a session per spec and subscribes it; returns the wall time it took."""
        t0 = time.monotonic()
        self._all(
            "connect",
            [
                {
                    "target": target,
                    "specs": part,
                    "sample_every": sample_every,
                    "concurrency": concurrency,
                }
                for part in self.split(specs)
            ],
        )
        return time.monotonic() - t0
