"""A lean Redis PUB/SUB connection: hiredis parsing straight off an asyncio Protocol.

One connection carries every channel of its (shard, partition) for this node.
It keeps the set of wanted channels; after any reconnect it resubscribes them in
batches before declaring itself ready, and a `subscribe` call returns only once
Redis has confirmed every channel (the subscribe-then-read rule of recovery).
Messages are handed to a synchronous callback that must not block: the reader
never waits on a client.

A link that carries nothing looks the same whether Redis is idle or frozen (SIGSTOP, a
hung host): TCP stays open and no error ever comes. So an idle ready link sends PING every
KEEPALIVE seconds, and one whose PING goes unanswered for `io_timeout` is dropped and
reconnected; `ready` (what /health reports) turns false within 2 * KEEPALIVE + io_timeout
of Redis going silent. Centrifuge does the same through rueidis (a PING every 400 ms
waiting `io_timeout`: redis_shard.go).

Messages are the hot path: on personal channels, one per delivery. `data_received` hands a
message to the callback itself, the broker maps its PUB/SUB name back to the channel through
a cache (keys.py `channels_by_pubsub`) and the codec tests for the bare payload first
(codec.py `decode_frame`). `python -m bench.instructions` counts them: its e2e shape less its
api shape is the read path's instructions per publication (1000 personal channels; at ea8bff1
59.9k, with this stop's read, fan-out and encoder changes 42.9k).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import hiredis

from app import metrics
from app.engines.redis.connect import Endpoint, open_connection
from app.engines.redis.outage import Outage
from app.engines.redis.resp import PING, pack_command
from app.timers import CoarseTimers

log = logging.getLogger("centrifugo.redis.pubsub")

BATCH = 512
# While subscribes stream in (a connect storm), a command waits up to this long for
# company, so that one socket write and one read carry several: Centrifugo's Redis
# client does the same (rueidis MaxFlushDelay, 100 µs). libuv counts whole milliseconds.
FLUSH_DELAY = 0.001
# PING cadence of an idle ready link (centrifuge's rueidis dialer KeepAlive).
KEEPALIVE = 0.4
# The readers' connection name when the section sets no client_name.
DEFAULT_NAME = "centrifugo-py-pubsub"


class PubSubUnavailable(ConnectionError):
    pass


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PubSubConnection) -> None:
        self._owner = owner
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection gives a stream transport; asyncio.Protocol's signature says
        # BaseTransport, which has no write().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        owner._rx_at = owner._get_loop().time()
        reader = self._reader
        reader.feed(data)
        gets = reader.gets
        msg_kind = owner._msg_kind
        on_message = owner._on_message
        while True:
            reply = gets()
            if reply is False:
                return
            # A message, nearly every reply on a data link: handed over here, without
            # _on_reply's call and kind checks (subscribe confirmations, errors, pongs go
            # there; the module docstring has the measurement). A message is a 3-item array
            # (RESP2) or push (RESP3) alike.
            if type(reply) is list and len(reply) == 3 and reply[0] == msg_kind:
                try:
                    on_message(reply[1], reply[2])
                except Exception:
                    log.exception("pub/sub message handler failed")
                continue
            owner._on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._on_lost(exc)


class PubSubConnection:
    """Supervised PUB/SUB link to one Redis endpoint.

    sharded=True uses SSUBSCRIBE/smessage (Redis 7 sharded PUB/SUB), False the
    classic SUBSCRIBE/message (node control channels).
    """

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Endpoint]],
        on_message: Callable[[bytes, bytes], None],
        *,
        sharded: bool,
        connect_timeout: float = 1.0,
        io_timeout: float = 4.0,
        name: str = "",
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._resolve = resolve
        self._on_message = on_message
        self._sharded = sharded
        self._sub_cmd = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsub_cmd = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
        self._msg_kind = b"smessage" if sharded else b"message"
        self._sub_kind = b"ssubscribe" if sharded else b"subscribe"
        self._unsub_kind = b"sunsubscribe" if sharded else b"unsubscribe"
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._name = name
        self._on_state = on_state
        self._wanted: set[bytes] = set()
        self._confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._proto: _Protocol | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._ready = False
        self._ready_event = asyncio.Event()
        # A connect attempt failed and none succeeded since: Redis is unreachable, and a
        # subscribe fails at once instead of waiting for a confirmation that cannot come.
        self._down = False
        self._rx_at = 0.0  # loop time data last arrived
        self._ping_at = 0.0  # loop time of the keepalive PING awaiting an answer, or 0
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # (command, channels) asked for in this loop turn: a burst of connects costs one
        # socket write (and few commands) instead of one per subscribe.
        self._queued: list[tuple[bytes, list[bytes]]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flushed_at = float("-inf")  # loop time of the last write of queued commands
        metrics.init_redis_pubsub()  # Centrifugo's buffer series (app/metrics.py)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Deadlines of subscribes waiting for Redis (one per connect): coarse timers, not
        # a loop timer each.
        self._timers: CoarseTimers | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def down(self) -> bool:
        """The last connect attempt failed (Redis unreachable)."""
        return self._down

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop, kept: asyncio.get_running_loop() costs a getpid() syscall on CPython
        3.11, and subscribe runs once per connect."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def start(self) -> None:
        self._task = self._get_loop().create_task(self._supervise())

    async def close(self) -> None:
        self._closing = True
        self._stop_keepalive()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_transport()
        self._fail_waiters(PubSubUnavailable("closed"))

    # --- public API ---

    def keep(self, channels: list[bytes]) -> None:
        """Subscribe `channels` for the life of this link without awaiting a confirmation:
        `ready` then means they are subscribed (every reconnect resubscribes them first)."""
        new = [ch for ch in channels if ch not in self._wanted]
        self._wanted.update(new)
        if new and self._ready:
            self._queue(self._sub_cmd, new)

    async def subscribe(self, channels: list[bytes], timeout: float) -> None:
        """Returns once Redis confirmed every channel; raises PubSubUnavailable on timeout,
        or at once while Redis is unreachable (nothing is kept then)."""
        if self._down:
            raise PubSubUnavailable("redis unreachable")
        loop = self._get_loop()
        futs = []
        new = []
        for ch in channels:
            self._wanted.add(ch)
            if ch in self._confirmed:
                continue
            fut = loop.create_future()
            self._waiters.setdefault(ch, []).append(fut)
            futs.append(fut)
            new.append(ch)
        if not futs:
            return
        if self._ready:
            self._queue(self._sub_cmd, new)
        timers = self._timers
        if timers is None:
            timers = self._timers = CoarseTimers(loop)
        timers.call_later(timeout, self._expire, new, futs)
        if len(futs) == 1:  # the common case, one client's channel: no gather
            await futs[0]
        else:
            await asyncio.gather(*futs)

    def _expire(self, channels: list[bytes], futs: list[asyncio.Future[None]]) -> None:
        """Fail the subscribes of one call that Redis has not confirmed in time."""
        for ch, fut in zip(channels, futs, strict=True):
            if not fut.done():
                fut.set_exception(PubSubUnavailable("pub/sub subscribe not confirmed in time"))
                waiters = self._waiters.get(ch)
                if waiters and fut in waiters:
                    waiters.remove(fut)

    def unsubscribe(self, channels: list[bytes]) -> None:
        gone = [ch for ch in channels if ch in self._wanted]
        for ch in gone:
            self._wanted.discard(ch)
            self._confirmed.discard(ch)
        if gone and self._ready:
            # Written at once (after any subscribes queued before it, to keep their order):
            # the caller does not wait for a confirmation, so the call itself is the send.
            self._queue(self._unsub_cmd, gone)
            self._flush_queued()

    # --- internals ---

    def _queue(self, cmd: bytes, channels: list[bytes]) -> None:
        queued = self._queued
        if self._flush_handle is None:
            loop = self._get_loop()
            if loop.time() - self._flushed_at < FLUSH_DELAY:
                # The last write was a moment ago: more subscribes are likely on the way.
                self._flush_handle = loop.call_later(FLUSH_DELAY, self._flush_queued)
            else:
                self._flush_handle = loop.call_soon(self._flush_queued)
        if queued and queued[-1][0] == cmd:
            queued[-1][1].extend(channels)
        else:
            queued.append((cmd, list(channels)))

    def _flush_queued(self) -> None:
        # In order, so an unsubscribe and a re-subscribe of one channel stay in sequence.
        # Nothing is lost if the link dropped meanwhile: the reconnect resubscribes every
        # wanted channel, and their waiters resolve then.
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()  # called early (an unsubscribe writes at once)
        queued, self._queued = self._queued, []
        if queued:
            self._flushed_at = self._get_loop().time()
            self._send_batches(*queued)

    def _send_batches(self, *ops: tuple[bytes, list[bytes]]) -> None:
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        commands = [
            pack_command((cmd, *channels[i : i + BATCH]))
            for cmd, channels in ops
            for i in range(0, len(channels), BATCH)
        ]
        if commands:
            proto.transport.write(commands[0] if len(commands) == 1 else b"".join(commands))

    def _on_reply(self, reply: object) -> None:
        if type(reply) is list and reply:
            kind = reply[0]
            if kind == self._msg_kind:
                try:
                    self._on_message(reply[1], reply[2])
                except Exception:
                    log.exception("pub/sub message handler failed")
                return
            if kind == self._sub_kind:
                ch = reply[1]
                if ch in self._wanted:
                    self._confirmed.add(ch)
                for fut in self._waiters.pop(ch, ()):
                    if not fut.done():
                        fut.set_result(None)
                return
            if kind == self._unsub_kind:
                ch = reply[1]
                if ch in self._wanted and ch in self._confirmed:
                    # Unasked-for: the slot moved away (cluster resharding). Start over.
                    log.warning("%s: server unsubscribed %r, reconnecting", self._name, ch)
                    self._drop_transport()
                return
        if isinstance(reply, hiredis.ReplyError):
            # MOVED and friends: our view of the cluster is stale.
            log.warning("%s: pub/sub error %s, reconnecting", self._name, reply)
            self._drop_transport()

    def _on_lost(self, exc: Exception | None) -> None:
        if not self._closing:  # a link lost is a PUB/SUB error too (centrifuge counts it)
            error = type(exc).__name__ if exc is not None else "ConnectionLost"
            metrics.child(metrics.REDIS_PUBSUB_ERRORS, error).inc()
        self._stop_keepalive()
        self._set_ready(False)
        self._confirmed.clear()
        self._proto = None
        self._lost.set()

    def _drop_transport(self) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    async def wait_ready(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._ready_event.wait()

    @property
    def has_channels(self) -> bool:
        return bool(self._wanted)

    def _set_ready(self, ready: bool) -> None:
        if ready:
            self._down = False
            self._ready_event.set()
        else:
            self._ready_event.clear()
        if self._ready != ready:
            self._ready = ready
            if self._on_state is not None:
                self._on_state(ready)

    # --- keepalive ---

    def _start_keepalive(self) -> None:
        self._stop_keepalive()
        loop = self._get_loop()
        self._rx_at = loop.time()
        self._ping_at = 0.0
        self._keepalive_handle = loop.call_later(KEEPALIVE, self._keepalive)

    def _stop_keepalive(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        proto = self._proto
        if proto is None or proto.transport is None or not self._ready:
            return
        loop = self._get_loop()
        now = loop.time()
        if self._ping_at and self._rx_at < self._ping_at:
            if now - self._ping_at >= self._io_timeout:
                log.warning(
                    "%s: no reply from redis in %.1fs, reconnecting",
                    self._name,
                    now - self._ping_at,
                )
                self._drop_transport()
                return
        elif now - self._rx_at >= KEEPALIVE:
            # Answered ["pong", ""] in subscribed mode, +PONG otherwise: either is ignored
            # by _on_reply; only its arrival (data_received) matters.
            proto.transport.write(PING)
            self._ping_at = now
        else:
            self._ping_at = 0.0
        self._keepalive_handle = loop.call_later(KEEPALIVE, self._keepalive)

    def _fail_waiters(self, exc: Exception) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
        self._waiters.clear()

    async def _connect(self) -> None:
        ep = await self._resolve()
        self._lost = asyncio.Event()
        # The configured client_name, as Centrifugo (rueidis names every connection, PUB/SUB
        # ones included); without one, a name of its own tells the readers apart. The
        # handshake is one round trip: it may take what a connect may, four times over.
        self._proto = await open_connection(
            ep,
            lambda: _Protocol(self),
            connect_by=self._get_loop().time() + self._connect_timeout,
            handshake_timeout=self._connect_timeout * 4,
            default_name=DEFAULT_NAME,
        )

    async def _resubscribe(self) -> None:
        wanted = list(self._wanted)
        if not wanted:
            return
        loop = asyncio.get_running_loop()
        futs = []
        for ch in wanted:
            fut = loop.create_future()
            self._waiters.setdefault(ch, []).append(fut)
            futs.append(fut)
        self._send_batches((self._sub_cmd, wanted))
        async with asyncio.timeout(max(self._connect_timeout * 4, 5.0)):
            await asyncio.gather(*futs)

    async def _supervise(self) -> None:
        outage = Outage(log, f"{self._name}: pub/sub")
        while not self._closing:
            try:
                await self._connect()
                await self._resubscribe()
            except Exception as e:
                # Whatever failed, supervision must go on: the resolver's errors are redis-py's
                # (e.g. MasterNotFoundError while a sentinel fails over), not builtin ones.
                delay = outage.failed(e)
                metrics.child(metrics.REDIS_PUBSUB_ERRORS, type(e).__name__).inc()
                self._down = True
                self._drop_transport()
                await asyncio.sleep(delay)
                continue
            outage.ended()
            self._set_ready(True)
            self._start_keepalive()
            # Channels asked for while we were resubscribing.
            missing = [
                ch for ch in self._wanted if ch not in self._confirmed and ch in self._waiters
            ]
            if missing:
                self._send_batches((self._sub_cmd, missing))
            await self._lost.wait()
            if not self._closing:
                log.warning("%s: pub/sub connection lost, reconnecting", self._name)
                await asyncio.sleep(0.05)
