"""Load generator: raw asyncio WebSocket clients speaking the Centrifugo JSON protocol.

The generator must cost less per frame than the server it measures (perf-anchors §3.5: a fully
parsing client is as expensive as the server). So each client does the WebSocket upgrade by
hand on an `asyncio.Protocol`, sends `connect` + `subscribe` in one frame, answers the
server's `{}` pings with `{}`, and from then on only cuts frames and counts newline-separated
messages in each text frame (C-speed `bytes.count`), never decoding JSON. Every k-th
connection also parses its messages to check offset continuity and read the publisher's
timestamp for latency.

Connections are spread over several processes (`LoadGenerator`), each driven over a pipe by
the benchmark runner: connect, reset counters, collect counts once the expected number of
messages arrived, disconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import select
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

_HANDSHAKE, _SETUP, _COUNT, _CLOSED = range(4)
# Socket reads ask for at most this much. asyncio's default (256 KiB) makes every recv
# allocate a buffer above glibc's mmap threshold: ~25-35 us extra per read on this VM kind,
# more than the read itself (see bench/README.md).
READ_SIZE = 65536
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 1, 8, 9, 10


@dataclass(frozen=True, slots=True)
class ConnSpec:
    """One connection: its global index, the channel it subscribes to, its connection JWT."""

    idx: int
    channel: str
    token: str


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str = "/connection/websocket"


def mask_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame (RFC 6455 §5.3); only used for a few control messages."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


PONG_FRAME_PAYLOAD = b"{}"


@dataclass(slots=True)
class Counters:
    """Per-process totals since the last reset (all connections of the process)."""

    msgs: int = 0
    frames: int = 0
    reads: int = 0  # socket reads that carried messages
    bytes: int = 0
    pings: int = 0
    first: float = 0.0
    last: float = 0.0
    # sampled connections only
    sampled: int = 0
    gaps: int = 0  # publications missing between two offsets
    dups: int = 0  # an offset not above the previous one (duplicate or reorder)
    other: int = 0  # pushes that are not publications (unsubscribe, disconnect, ...)
    lat: list[float] = field(default_factory=list)


class WsClient(asyncio.Protocol):
    """One WebSocket connection; counting is aggregated into the process `Counters`."""

    def __init__(
        self,
        owner: LoadWorker,
        spec: ConnSpec,
        target: Target,
        sample: bool,
        ready: asyncio.Future[None],
    ) -> None:
        self.owner = owner
        self.spec = spec
        self.target = target
        self.sample = sample
        self.ready = ready
        self.state = _HANDSHAKE
        self.buf = b""
        self.last_off = 0
        self.transport: asyncio.Transport | None = None
        self.close_code = 0
        self.lazy_sock: socket.socket | None = None  # set once the poller reads this connection

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(AttributeError):  # the selector transport's read size
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
        key = base64.b64encode(os.urandom(16)).decode()
        t = self.target
        req = (
            f"GET {t.path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: centrifuge-json\r\n\r\n"
        )
        self.transport.write(req.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lazy_sock is not None and self.owner.poller is not None:
            self.owner.poller.remove(self)
        if self.state != _CLOSED:
            self.owner.closed += 1
        self.state = _CLOSED
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection {self.spec.idx} lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.state == _HANDSHAKE:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {head.splitlines()[0]!r}")
                return
            self.state = _SETUP
            s = self.spec
            cmds = (
                orjson.dumps({"id": 1, "connect": {"token": s.token, "name": "bench"}})
                + b"\n"
                + orjson.dumps({"id": 2, "subscribe": {"channel": s.channel}})
            )
            self._send(cmds)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        msgs = frames = 0
        while n - pos >= 2:
            ln = buf[pos + 1] & 127
            if ln < 126:
                start = pos + 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + ln
            if end > n:
                break
            op = buf[pos] & 15
            pos = end
            if op != OP_TEXT:
                self._control(op, buf[start:end])
            elif self.state == _COUNT:
                # Counting mode: messages are newline-separated within a frame.
                frames += 1
                k = buf.count(b"\n", start, end) + 1
                # Our publication data never contains "{}", so this only finds pings.
                if buf.find(b"{}", start, end) >= 0:
                    k -= self._pings(buf[start:end])
                msgs += k
                if self.sample:
                    self._parse(buf[start:end])
            elif self.state == _SETUP:
                self._setup(buf[start:end])
        self.buf = buf[pos:] if pos < n else b""
        if msgs:
            c = self.owner.c
            now = time.monotonic()
            c.last = now
            if not c.first:
                c.first = now
            c.msgs += msgs
            c.frames += frames
            c.reads += 1
            c.bytes += len(data)

    # --- helpers ---

    def _send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(payload, opcode))

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection {self.spec.idx}: {why}"))
        self.close()

    def close(self) -> None:
        # The poller's dup of the socket must go too, or the kernel never sends our FIN.
        if self.lazy_sock is not None and self.owner.poller is not None:
            self.owner.poller.remove(self)
        if self.transport is not None:
            self.transport.close()

    def _control(self, op: int, payload: bytes) -> None:
        if op == OP_PING:
            self._send(payload, OP_PONG)
        elif op == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.state != _CLOSED:
                self.owner.closed += 1
                self.owner.close_codes[self.close_code] = (
                    self.owner.close_codes.get(self.close_code, 0) + 1
                )
            self.state = _CLOSED
            if not self.ready.done():
                self._fail(f"closed by server: {self.close_code} {payload[2:]!r}")
            else:
                self.close()

    def _pings(self, payload: bytes) -> int:
        """Answers the Centrifugo pings (`{}` messages) in a frame; returns how many."""
        pings = sum(1 for line in payload.split(b"\n") if line == b"{}")
        for _ in range(pings):
            self._send(PONG_FRAME_PAYLOAD)
        self.owner.c.pings += pings
        return pings

    def _setup(self, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if line == b"{}":
                self._send(PONG_FRAME_PAYLOAD)
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                self._fail(f"bad JSON during setup: {line[:100]!r}")
                return
            if "error" in obj:
                self._fail(f"command {obj.get('id')} failed: {obj['error']}")
                return
            if obj.get("id") == 2:
                self.state = _COUNT
                if not self.sample and self.owner.poller is not None:
                    self.owner.poller.add(self)
                if not self.ready.done():
                    self.ready.set_result(None)

    def _parse(self, payload: bytes) -> None:
        """Sampled connections: offset continuity and publish-to-receive latency."""
        c = self.owner.c
        now = time.monotonic()
        for line in payload.split(b"\n"):
            if line == b"{}":
                continue
            try:
                push = orjson.loads(line).get("push") or {}
            except (orjson.JSONDecodeError, AttributeError):
                c.other += 1
                continue
            pub = push.get("pub")
            if pub is None:
                c.other += 1
                continue
            c.sampled += 1
            off = pub.get("offset", 0)
            if off:
                last = self.last_off
                if last:
                    if off <= last:
                        c.dups += 1
                    elif off != last + 1:
                        c.gaps += off - last - 1
                self.last_off = off
            data = pub.get("data")
            if type(data) is dict:
                ts = data.get("ts")
                if ts:
                    c.lat.append(now - ts)


class LazyPoller:
    """Reads the non-sampled connections every `interval` s instead of on every frame.

    On this kind of machine a socket read costs more than parsing a frame, and a read per
    frame made the clients as expensive as the server. Such connections leave the event
    loop's reader (`pause_reading`) and are read here through a dup of their socket: one
    `epoll_wait` per interval and one `recv` per ready socket, so a read carries every frame
    that arrived meanwhile (the kernel buffers them). Their receive times are late by up to
    `interval`; latency is only measured on the sampled, eagerly read connections.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ep = select.epoll()
        self.socks: dict[int, tuple[socket.socket, WsClient]] = {}
        self.task = asyncio.get_running_loop().create_task(self.run())

    def add(self, client: WsClient) -> None:
        tr = client.transport
        assert tr is not None
        tr.pause_reading()
        sock = socket.socket(fileno=os.dup(tr.get_extra_info("socket").fileno()))
        sock.setblocking(False)
        client.lazy_sock = sock
        self.socks[sock.fileno()] = (sock, client)
        self.ep.register(sock.fileno(), select.EPOLLIN)

    def remove(self, client: WsClient) -> None:
        sock = client.lazy_sock
        if sock is not None:
            client.lazy_sock = None
            self.socks.pop(sock.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(sock.fileno())
            sock.close()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for fd, _ in self.ep.poll(0):
                entry = self.socks.get(fd)
                if entry is None:
                    continue
                sock, client = entry
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    client.data_received(data)
                else:
                    client.close()

    def close(self) -> None:
        self.task.cancel()
        for _, client in list(self.socks.values()):
            self.remove(client)
        self.ep.close()


class LoadWorker:
    """One load-generator process: its connections and counters, driven over a pipe."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.clients: list[WsClient] = []
        self.c = Counters()
        self.closed = 0
        self.close_codes: dict[int, int] = {}
        self.poller: LazyPoller | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd, arg = await loop.run_in_executor(None, self.pipe.recv)
            if cmd == "exit":
                await self.disconnect()
                self.pipe.send(("ok", None))
                return
            try:
                result = await getattr(self, cmd)(**arg)
            except Exception as e:  # reported to the runner, which aborts the run
                self.pipe.send(("error", f"{type(e).__name__}: {e}"))
            else:
                self.pipe.send(("ok", result))

    async def connect(
        self,
        target: Target,
        specs: list[ConnSpec],
        sample_every: int,
        concurrency: int,
        read_delay: float,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self.poller is None and read_delay > 0:
            self.poller = LazyPoller(read_delay)
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()

        async def one(spec: ConnSpec) -> None:
            async with sem:
                ready: asyncio.Future[None] = loop.create_future()
                sample = sample_every > 0 and spec.idx % sample_every == 0
                _, proto = await loop.create_connection(
                    lambda: WsClient(self, spec, target, sample, ready), target.host, target.port
                )
                self.clients.append(proto)
                async with asyncio.timeout(30):
                    await ready

        await asyncio.gather(*(one(s) for s in specs))
        return {"connected": len(specs), "seconds": time.monotonic() - t0}

    async def reset(self) -> float:
        self.c = Counters()
        self.closed = 0
        self.close_codes = {}
        for cl in self.clients:
            cl.last_off = 0
        return time.monotonic()

    async def collect(self, expected: int, idle: float, hard: float) -> dict[str, Any]:
        """Waits until `expected` messages arrived, or no progress for `idle` s, or `hard` s."""
        t0 = last_change = time.monotonic()
        seen = -1
        while self.c.msgs < expected:
            now = time.monotonic()
            if self.c.msgs != seen:
                seen, last_change = self.c.msgs, now
            if now - last_change > idle or now - t0 > hard:
                break
            await asyncio.sleep(0.005)
        c = self.c
        return {
            "msgs": c.msgs,
            "frames": c.frames,
            "reads": c.reads,
            "bytes": c.bytes,
            "pings": c.pings,
            "first": c.first,
            "last": c.last,
            "sampled": c.sampled,
            "gaps": c.gaps,
            "dups": c.dups,
            "other": c.other,
            "lat": c.lat,
            "closed": self.closed,
            "close_codes": self.close_codes,
        }

    async def disconnect(self) -> int:
        n = 0
        if self.poller is not None:
            self.poller.close()
            self.poller = None
        for cl in self.clients:
            if cl.transport is not None and not cl.transport.is_closing():
                cl.state = _CLOSED
                cl._send(b"\x03\xe8", OP_CLOSE)
                cl.close()
                n += 1
        self.clients = []
        await asyncio.sleep(0.05)
        return n


def worker_main(pipe: Connection) -> None:
    """Entry point of a load-generator process (uvloop when it is installed)."""
    worker = LoadWorker(pipe)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(worker.serve())
    else:
        uvloop.run(worker.serve())


class LoadGenerator:
    """Runner-side handle on N load-generator processes (connections spread by index)."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _all(self, cmd: str, args: list[dict[str, Any]]) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((cmd, arg))
        out = []
        errors = []
        for pipe in self.pipes:
            status, value = pipe.recv()
            if status == "error":
                errors.append(value)
            out.append(value)
        if errors:
            raise RuntimeError(f"load generator {cmd} failed: {errors[0]}")
        return out

    def connect(
        self,
        target: Target,
        specs: list[ConnSpec],
        sample_every: int = 50,
        concurrency: int = 100,
        read_delay: float = 0.05,
    ) -> float:
        """Connects and subscribes every spec (adding to any connections already open);
        returns the wall time it took."""
        t0 = time.monotonic()
        self._all(
            "connect",
            [
                {
                    "target": target,
                    "specs": part,
                    "sample_every": sample_every,
                    "concurrency": concurrency,
                    "read_delay": read_delay,
                }
                for part in self.split(specs)
            ],
        )
        return time.monotonic() - t0

    def split(self, specs: list[ConnSpec]) -> list[list[ConnSpec]]:
        """Which process holds which connection (by index)."""
        n = len(self.pipes)
        return [[s for s in specs if s.idx % n == i] for i in range(n)]

    def reset(self) -> None:
        self._all("reset", [{} for _ in self.pipes])

    def collect(self, expected: list[int], idle: float, hard: float) -> list[dict[str, Any]]:
        return self._all("collect", [{"expected": e, "idle": idle, "hard": hard} for e in expected])

    def disconnect(self) -> None:
        self._all("disconnect", [{} for _ in self.pipes])

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("exit", None))
        for pipe in self.pipes:
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll(5):
                    pipe.recv()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
