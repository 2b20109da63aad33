"""Load generator: raw asyncio WebSocket clients speaking the Centrifugo JSON protocol.

The generator must cost less per frame than the server it measures (perf-anchors §3.5: a fully
parsing client is as expensive as the server). So each client does the WebSocket upgrade by
hand on an `asyncio.Protocol`, sends `connect` + `subscribe` in one frame, answers the
server's `{}` pings with `{}`, and from then on only cuts frames and counts newline-separated
messages in each text frame (C-speed `bytes.count`), never decoding JSON. Every k-th
connection also parses its messages to check offset continuity and read the publisher's
timestamp for latency.

The same clients speak Engine.IO 4 / Socket.IO 5 to the python-socketio peer (`Target.proto
== "sio"`): open packet, namespace connect `40`, `join` event with an ack, then every `42…`
frame is one message and `2` pings are answered with `3`.

Storm clients (`storm_connect`) remember the stream position of their first subscribe reply and,
once armed (`storm_arm`), reconnect as soon as they lose the connection and subscribe again with
`recover: true` from that position, retrying with a short jittered backoff while the server is
away; `storm_collect` reports how many came back with `recovered: true` and when.

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
import random
import select
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

_HANDSHAKE, _SETUP, _COUNT, _CLOSED = range(4)
# Socket.IO setup steps: waiting for the Engine.IO open packet, the namespace connect reply,
# the ack of the `join` event.
_SIO_OPEN, _SIO_CONNECT, _SIO_JOIN = range(3)
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
    proto: str = "centrifuge"  # or "sio" (Engine.IO 4 / Socket.IO 5, python-socketio peer)
    # Local addresses the clients connect from, by connection index (bench.scale): one source
    # address has only the ephemeral range (~28k ports) towards one server address and port.
    sources: tuple[str, ...] = ()

    @classmethod
    def socketio(cls, host: str, port: int) -> Target:
        return cls(host, port, "/socket.io/?EIO=4&transport=websocket", "sio")


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


async def connect_from(
    loop: asyncio.AbstractEventLoop, host: str, port: int, source: str
) -> socket.socket:
    """A TCP socket connected to (host, port) from local address `source`. With
    IP_BIND_ADDRESS_NO_PORT connect() picks the port, unique per 4-tuple (a TIME_WAIT one of
    an earlier run may be reused); a plain bind() would reserve it towards every destination."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


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

    async def wait_for(self, expected: int, idle: float, hard: float) -> None:
        """Until `expected` messages arrived, or no progress for `idle` s, or `hard` s (a
        poll of the counters: the clients count in their protocol callbacks)."""
        t0 = last_change = time.monotonic()
        seen = -1
        while self.msgs < expected:
            now = time.monotonic()
            if self.msgs != seen:
                seen, last_change = self.msgs, now
            if now - last_change > idle or now - t0 > hard:
                break
            await asyncio.sleep(0.005)

    def report(self, closed: int, close_codes: dict[int, int]) -> dict[str, Any]:
        """What `collect` answers the parent: the totals and the server's closes."""
        return {
            "msgs": self.msgs,
            "frames": self.frames,
            "reads": self.reads,
            "bytes": self.bytes,
            "pings": self.pings,
            "first": self.first,
            "last": self.last,
            "sampled": self.sampled,
            "gaps": self.gaps,
            "dups": self.dups,
            "other": self.other,
            "lat": self.lat,
            "closed": closed,
            "close_codes": close_codes,
        }


class WsClient(asyncio.Protocol):
    """One WebSocket connection; counting is aggregated into the process `Counters`.

    `recover` (storm clients) makes the subscribe ask for recovery from that (offset, epoch);
    the subscribe result is kept in `sub_result`.
    """

    def __init__(
        self,
        owner: LoadWorker,
        spec: ConnSpec,
        target: Target,
        sample: bool,
        ready: asyncio.Future[None],
        storm: bool = False,
        recover: tuple[int, str] | None = None,
    ) -> None:
        self.owner = owner
        self.spec = spec
        self.target = target
        self.sio = target.proto == "sio"
        self.sample = sample
        self.ready = ready
        self.storm = storm
        self.recover = recover
        self.sub_result: dict[str, Any] = {}
        self.live = False  # setup finished: losing the connection now is a disconnect
        self.state = _HANDSHAKE
        self.sio_step = _SIO_OPEN
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
        proto = "" if self.sio else "Sec-WebSocket-Protocol: centrifuge-json\r\n"
        req = (
            f"GET {t.path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{proto}\r\n"
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
        if self.live and self.storm:
            self.live = False
            self.owner.storm_lost(self)

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
            if not self.sio:  # Socket.IO waits for the server's open packet first
                self._send(self._setup_commands())
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
                if self.sio:
                    # Engine.IO over WebSocket: one packet per frame, `42[...]` an event.
                    if buf.startswith(b"42", start):
                        frames += 1
                        msgs += 1
                        if self.sample:
                            self._parse_sio(buf[start:end])
                    elif end - start == 1 and buf[start] == 0x32:  # "2": ping
                        self._send(b"3")
                        self.owner.c.pings += 1
                    else:
                        self.owner.c.other += 1
                    continue
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
                if self.sio:
                    self._setup_sio(buf[start:end])
                else:
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

    def _setup_commands(self) -> bytes:
        s = self.spec
        sub: dict[str, Any] = {"channel": s.channel}
        if self.recover is not None:
            offset, epoch = self.recover
            sub |= {"recover": True, "offset": offset, "epoch": epoch}
        return (
            orjson.dumps({"id": 1, "connect": {"token": s.token, "name": "bench"}})
            + b"\n"
            + orjson.dumps({"id": 2, "subscribe": sub})
        )

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

    def _ready(self) -> None:
        self.state = _COUNT
        self.live = True
        if not self.sample and not self.storm and self.owner.poller is not None:
            self.owner.poller.add(self)
        if not self.ready.done():
            self.ready.set_result(None)

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
                self.sub_result = obj.get("subscribe") or {}
                self._ready()

    def _setup_sio(self, payload: bytes) -> None:
        """Engine.IO open -> `40` namespace connect -> `join` event with ack id 0 -> ack."""
        if payload == b"2":
            self._send(b"3")
        elif self.sio_step == _SIO_OPEN and payload.startswith(b"0"):
            self.sio_step = _SIO_CONNECT
            self._send(b"40")
        elif self.sio_step == _SIO_CONNECT and payload.startswith(b"40"):
            self.sio_step = _SIO_JOIN
            self._send(b'420["join",%s]' % orjson.dumps(self.spec.channel))
        elif self.sio_step == _SIO_JOIN and payload.startswith(b"430"):
            self._ready()
        elif payload.startswith(b"44"):
            self._fail(f"namespace connect refused: {payload[:200]!r}")

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

    def _parse_sio(self, payload: bytes) -> None:
        """Sampled Socket.IO connections: latency only (events carry no offsets)."""
        c = self.owner.c
        try:
            args = orjson.loads(payload[2:])
            data = args[1]
        except (orjson.JSONDecodeError, IndexError, TypeError):
            c.other += 1
            return
        c.sampled += 1
        if type(data) is dict and data.get("ts"):
            c.lat.append(time.monotonic() - data["ts"])


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


@dataclass(slots=True)
class StormStats:
    """Reconnects of storm clients since `storm_arm`."""

    t_arm: float = 0.0
    lost: int = 0  # live storm connections lost (each starts a reconnect)
    attempts: int = 0  # connection attempts, failed ones included
    failures: int = 0
    recovered: int = 0  # re-subscribed with recovered=true
    not_recovered: int = 0  # re-subscribed, but the server could not recover
    pubs: int = 0  # publications returned by the recovering subscribes
    first: float = 0.0  # time of the first / last re-subscribe reply
    last: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class LoadWorker:
    """One load-generator process: its connections and counters, driven over a pipe."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.clients: list[WsClient] = []
        self.c = Counters()
        self.closed = 0
        self.close_codes: dict[int, int] = {}
        self.poller: LazyPoller | None = None
        # storm clients: spec and first stream position by index, the live client by index
        self.storm_target: Target | None = None
        self.storm_specs: dict[int, ConnSpec] = {}
        self.positions: dict[int, tuple[int, str]] = {}
        self.storm_clients: dict[int, WsClient] = {}
        self.storm_active = False
        self.storm = StormStats()
        self.storm_tasks: set[asyncio.Task[None]] = set()
        self.storm_expected = 1 << 62  # set by storm_collect
        self.storm_done = asyncio.Event()

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

    async def _open(
        self,
        spec: ConnSpec,
        target: Target,
        sample: bool,
        storm: bool = False,
        recover: tuple[int, str] | None = None,
    ) -> WsClient:
        """Connects, subscribes and returns the client once its subscribe reply arrived."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def client() -> WsClient:
            return WsClient(self, spec, target, sample, ready, storm, recover)

        if target.sources:
            source = target.sources[spec.idx % len(target.sources)]
            sock = await connect_from(loop, target.host, target.port, source)
            _, proto = await loop.create_connection(client, sock=sock)
        else:
            _, proto = await loop.create_connection(client, target.host, target.port)
        try:
            async with asyncio.timeout(60):
                await ready
        except BaseException:
            proto.close()
            raise
        return proto

    async def connect(
        self,
        target: Target,
        specs: list[ConnSpec],
        sample_every: int,
        concurrency: int,
        read_delay: float,
    ) -> dict[str, Any]:
        if self.poller is None and read_delay > 0:
            self.poller = LazyPoller(read_delay)
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()

        async def one(spec: ConnSpec) -> None:
            async with sem:
                sample = sample_every > 0 and spec.idx % sample_every == 0
                self.clients.append(await self._open(spec, target, sample))

        await asyncio.gather(*(one(s) for s in specs))
        return {"connected": len(specs), "seconds": time.monotonic() - t0, "t1": time.monotonic()}

    # --- reconnect storm ---

    async def storm_connect(
        self, target: Target, specs: list[ConnSpec], concurrency: int
    ) -> dict[str, Any]:
        """Connects storm clients and keeps each one's stream position (offset, epoch)."""
        sem = asyncio.Semaphore(concurrency)
        self.storm_target = target
        t0 = time.monotonic()

        async def one(spec: ConnSpec) -> None:
            async with sem:
                cl = await self._open(spec, target, False, storm=True)
                res = cl.sub_result
                if not res.get("recoverable") or "epoch" not in res:
                    raise RuntimeError(f"storm channel {spec.channel} is not recoverable: {res}")
                self.storm_specs[spec.idx] = spec
                self.positions[spec.idx] = (int(res.get("offset", 0)), res["epoch"])
                self.storm_clients[spec.idx] = cl

        await asyncio.gather(*(one(s) for s in specs))
        return {"connected": len(specs), "seconds": time.monotonic() - t0}

    async def storm_arm(self) -> float:
        """From now on a storm client that loses its connection reconnects and recovers."""
        self.storm = StormStats(t_arm=time.monotonic())
        self.storm_expected = 1 << 62
        self.storm_active = True
        return self.storm.t_arm

    def storm_lost(self, client: WsClient) -> None:
        if not self.storm_active or self.storm_clients.get(client.spec.idx) is not client:
            return
        self.storm.lost += 1
        task = asyncio.get_running_loop().create_task(self._storm_reconnect(client.spec))
        self.storm_tasks.add(task)
        task.add_done_callback(self.storm_tasks.discard)

    async def _storm_reconnect(self, spec: ConnSpec) -> None:
        st = self.storm
        target = self.storm_target
        assert target is not None
        attempt = 0
        while self.storm_active:
            if attempt:
                # Jittered exponential backoff from 50 ms to 1 s while the server is away
                # (the SDKs back off from 0.5 s; shorter here to time the server, not us).
                await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0) * (0.5 + random.random()))
            attempt += 1
            st.attempts += 1
            try:
                cl = await self._open(spec, target, False, True, self.positions[spec.idx])
            except (OSError, ConnectionError, TimeoutError) as e:
                st.failures += 1
                key = type(e).__name__
                st.errors[key] = st.errors.get(key, 0) + 1
                continue
            now = time.monotonic()
            self.storm_clients[spec.idx] = cl
            res = cl.sub_result
            if res.get("recovered"):
                st.recovered += 1
                st.pubs += len(res.get("publications") or ())
            else:
                st.not_recovered += 1
            st.last = now
            if not st.first:
                st.first = now
            if st.recovered + st.not_recovered >= self.storm_expected:
                self.storm_done.set()
            return

    async def storm_collect(self, expected: int, timeout: float) -> dict[str, Any]:
        """Waits until `expected` storm clients re-subscribed (or `timeout` s)."""
        st = self.storm
        self.storm_expected = expected
        self.storm_done.clear()
        if st.recovered + st.not_recovered < expected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.storm_done.wait()
        return {
            "t_arm": st.t_arm,
            "lost": st.lost,
            "attempts": st.attempts,
            "failures": st.failures,
            "recovered": st.recovered,
            "not_recovered": st.not_recovered,
            "pubs": st.pubs,
            "first": st.first,
            "last": st.last,
            "errors": st.errors,
            "close_codes": self.close_codes,
        }

    # --- counting ---

    async def reset(self) -> float:
        self.c = Counters()
        self.closed = 0
        self.close_codes = {}
        for cl in self.clients:
            cl.last_off = 0
        return time.monotonic()

    async def collect(self, expected: int, idle: float, hard: float) -> dict[str, Any]:
        """Waits until `expected` messages arrived, or no progress for `idle` s, or `hard` s."""
        await self.c.wait_for(expected, idle, hard)
        return self.c.report(self.closed, self.close_codes)

    async def disconnect(self) -> int:
        n = 0
        self.storm_active = False
        for task in list(self.storm_tasks):
            task.cancel()
        if self.poller is not None:
            self.poller.close()
            self.poller = None
        for cl in [*self.clients, *self.storm_clients.values()]:
            if cl.transport is not None and not cl.transport.is_closing():
                cl.state = _CLOSED
                cl._send(b"\x03\xe8", OP_CLOSE)
                cl.close()
                n += 1
        self.clients = []
        self.storm_clients = {}
        self.storm_specs = {}
        self.positions = {}
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

    def __init__(self, procs: int, sample_every: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.regular = procs
        # The sampled connections (every `sample_every`-th) get a process of their own: in
        # a process that also polls hundreds of lazy sockets, a sampled frame waits behind
        # the poller's pass (5-20 ms on this VM kind) and the latency measured is the load
        # generator's, not the server's.
        self.sample_every = sample_every
        for _ in range(procs + (1 if sample_every > 0 else 0)):
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

    def storm_connect(self, target: Target, specs: list[ConnSpec], concurrency: int = 100) -> float:
        """Connects storm clients (they keep their first stream position); wall time."""
        t0 = time.monotonic()
        self._all(
            "storm_connect",
            [
                {"target": target, "specs": part, "concurrency": concurrency}
                for part in self.split(specs)
            ],
        )
        return time.monotonic() - t0

    def storm_arm(self) -> None:
        self._all("storm_arm", [{} for _ in self.pipes])

    def storm_collect(self, expected: list[int], timeout: float) -> list[dict[str, Any]]:
        return self._all("storm_collect", [{"expected": e, "timeout": timeout} for e in expected])

    def split(self, specs: list[ConnSpec]) -> list[list[ConnSpec]]:
        """Which process holds which connection (by index): sampled indexes go to the
        probe process (the last one), the others round-robin over the regular ones."""
        parts: list[list[ConnSpec]] = [[] for _ in self.pipes]
        every = self.sample_every
        for s in specs:
            if every > 0 and s.idx % every == 0:
                parts[-1].append(s)
            else:
                parts[s.idx % self.regular].append(s)
        return parts

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
