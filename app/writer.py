"""Per-connection outgoing queue.

Messages queued in one event-loop turn leave together, so a burst of replies and pushes
costs one socket write: joined by the codec's separator into frames of at most
`MAX_MESSAGES_IN_FRAME` (16) messages each, as centrifuge's writer collects at most
`defaultMaxMessagesInFrame` items per WriteMany. A burst of 40 is three frames (16, 16, 8)
in one socket write (`write_many_now`) on the synchronous path, three awaited writes on
the async path (centrifuge's streams flush once per WriteMany too). At close the remainder
leaves as one frame, uncapped, as writer.go's close(flushRemaining) writes it.

An idle connection costs no task and no event: a writer with something queued joins
its loop's `_Flusher`, and one `call_soon` callback per loop turn flushes every such
writer. Transports with a synchronous `write_now` (WebSocket without compression) are
written right there; a fan-out to N connections therefore costs N list appends and N
socket writes, and no task switch. Transports that only offer an async `write`
(HTTP streams, SSE, gRPC) get a task for as long as they have batches to write.

The queue is bounded in bytes: a client that does not read fast enough is disconnected
with 3008 instead of growing memory or slowing the fan-out for everyone else. For the
synchronous path the bound applies to what the transport still holds unsent (its write
buffer) after each flush; for the async path, to what waits behind the write in flight.

And in time, as Centrifugo's `websocket.write_timeout` bounds each write: a peer that
stops reading fills the kernel's send buffer, and then the transport's buffer holds what
the kernel did not take. Bytes that wait there longer than the transport's
`write_timeout` disconnect the client with 3009 (write error), however far below the
queue bound the backlog is. On the synchronous path one loop timer per stalled connection
checks it (armed when a write leaves bytes behind, so a peer that keeps up costs none);
async transports bound their own `write`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable

from app import metrics
from app.errors import DISCONNECT_SLOW, DISCONNECT_WRITE_ERROR, Disconnect
from app.transport import WRITE_ERRORS, SyncTransport, Transport, is_sync

log = logging.getLogger("centrifugo.writer")


# Bytes a transport may add to a message when it frames it (a WebSocket server frame
# header is at most 10 bytes): the write timeout's accounting allows for them.
FRAME_OVERHEAD = 10

# centrifuge writer.go `defaultMaxMessagesInFrame`: the most messages one frame carries.
# Centrifugo OSS has no config key for it (centrifuge's MaxMessagesInFrame is set only by
# embedding applications), so neither have we.
DEFAULT_MAX_MESSAGES_IN_FRAME = 16
# Bench only, never for production: lets `python -m bench --app-env
# CENTRIFUGO_PY_BENCH_MAX_MESSAGES_IN_FRAME=1` compare one message per frame with peers that
# send no batches (-1: no limit, centrifuge's meaning; 0 or unset: the default). Read once.
BENCH_MAX_MESSAGES_IN_FRAME_ENV = "CENTRIFUGO_PY_BENCH_MAX_MESSAGES_IN_FRAME"


def _max_messages_in_frame(raw: str | None) -> int:
    """The cap from the bench override `raw`: -1 (no limit) or a positive count."""
    if not raw:
        return DEFAULT_MAX_MESSAGES_IN_FRAME
    try:
        n = int(raw)
    except ValueError:
        n = -2
    if n < -1:
        log.warning(
            "%s=%r is not a count of messages (or -1): using %d",
            BENCH_MAX_MESSAGES_IN_FRAME_ENV,
            raw,
            DEFAULT_MAX_MESSAGES_IN_FRAME,
        )
        return DEFAULT_MAX_MESSAGES_IN_FRAME
    return n if n != 0 else DEFAULT_MAX_MESSAGES_IN_FRAME


MAX_MESSAGES_IN_FRAME = _max_messages_in_frame(os.environ.get(BENCH_MAX_MESSAGES_IN_FRAME_ENV))


class _Flusher:
    """The writers of one event loop that have something queued.

    The first writer queued in a loop turn schedules one callback; every writer queued
    until that callback runs is flushed by it, so batching costs one loop callback per
    turn in all, not one per connection.
    """

    __slots__ = ("_loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the flusher lives in a map keyed by its loop and must not keep it alive.
        self._loop = weakref.ref(loop)
        self.pending: list[Writer] = []  # Writer.enqueue appends itself (inlined: hot path)

    def schedule(self) -> None:
        loop = self._loop()
        assert loop is not None
        loop.call_soon(self._run)

    def _run(self) -> None:
        pending = self.pending
        self.pending = []
        for writer in pending:
            try:
                writer._flush()
            except Exception:  # a bug in one connection must not stall the others
                log.exception("flushing a connection failed")


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


# The last loop asked for and its flusher: a worker has one loop, and a weak-keyed
# lookup builds a weak reference per call (one per connection).
_last: tuple[asyncio.AbstractEventLoop | None, _Flusher | None] = (None, None)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    global _last
    last_loop, f = _last
    if last_loop is loop and f is not None:
        return f
    f = _flushers.get(loop)
    if f is None:
        f = _flushers[loop] = _Flusher(loop)
    _last = (loop, f)
    return f


class Writer:
    __slots__ = (
        "_transport",
        "_sync",
        "_flusher",
        "_buf",
        "_size",
        "_max_size",
        "_on_error",
        "_closed",
        "_sep",
        "_task",
        "_transport_name",
        "_loop",
        "_stall",
        "_stall_written",
        "_unknown",
        "counting",
    )

    def __init__(
        self,
        transport: Transport,
        max_size: int,
        on_error: Callable[[Disconnect], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._transport = transport
        # The synchronous path's transport, None for the async path (app/transport.py).
        self._sync: SyncTransport | None = transport if is_sync(transport) else None
        self._loop = loop or asyncio.get_running_loop()
        self._flusher = _flusher(self._loop)
        self._sep = transport.codec.separator
        # Messages are counted as they are queued, by the frame type and channel namespace
        # the caller names (centrifuge counts each queue item so); "unknown" when none.
        self._transport_name = transport.name
        # Taken once per connection, not per message: whether metrics are on (they are set
        # once per worker, before any connection), and the counter of unnamed messages.
        self.counting = metrics.enabled()
        self._unknown = metrics.sent(transport.name, "unknown")
        # The next frame: None while nothing is queued, one message as is (the shared
        # bytes of a fan-out), or a list of messages. Not None means the writer is in its
        # flusher's list, or (async path) its task takes the batch once the write in
        # flight is done.
        self._buf: bytes | list[bytes] | None = None
        self._size = 0  # bytes in _buf
        self._max_size = max_size
        self._on_error = on_error
        self._closed = False
        self._task: asyncio.Task[None] | None = None  # async path, while writing
        # Sync path, while the transport holds unsent bytes: the write timeout's timer,
        # and the bytes written since it was armed.
        self._stall: asyncio.TimerHandle | None = None
        self._stall_written = 0

    def enqueue(self, data: bytes, counter: metrics.MessageCounter | None = None) -> None:
        """Queue one message; `counter` (app/metrics.py `sent`) counts it."""
        if self._closed:
            return
        if counter is None:
            counter = self._unknown  # None with metrics off
        if counter is not None:
            counter.add(len(data))
        buf = self._buf
        if buf is None:
            self._buf = data
            self._size = len(data)
            flusher = self._flusher
            if not flusher.pending:
                flusher.schedule()
            flusher.pending.append(self)
            if self._size <= self._max_size or self._max_size <= 0:
                return
        else:
            if type(buf) is bytes:
                self._buf = [buf, data]
            else:
                buf.append(data)  # type: ignore[union-attr]
            self._size += len(data)
            if self._size <= self._max_size or self._max_size <= 0:
                return
        self._fail(Disconnect(DISCONNECT_SLOW))

    def _take(self) -> bytes | list[bytes]:
        """The queued messages as one frame, or as frames of at most
        MAX_MESSAGES_IN_FRAME messages each when more are queued (writer.go collects at most
        that many per WriteMany); the queue is empty afterwards. Once closing, what remains
        is one frame, uncapped, as writer.go's close(flushRemaining) writes it."""
        batch = self._buf
        self._buf = None
        self._size = 0
        if type(batch) is bytes:
            return batch  # one message, the fan-out's shared bytes: the common case
        messages: list[bytes] = batch  # type: ignore[assignment]  # not None: flushed
        cap = MAX_MESSAGES_IN_FRAME
        if len(messages) <= cap or cap < 0 or self._closed:
            return self._sep.join(messages)
        sep = self._sep
        return [sep.join(messages[i : i + cap]) for i in range(0, len(messages), cap)]

    def _flush(self) -> None:
        if self._buf is None:
            return  # already flushed by close(), or dropped by a failure
        sync = self._sync
        if sync is None:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._write_async())
            return  # else the task in flight takes the batch when its write is done
        frames = self._buf
        if type(frames) is bytes:
            # One message (a fan-out's shared bytes), the common case: _take's first
            # branch, inlined (one call less per delivery; measured with the hub's
            # shortcuts, app/hub.py).
            self._buf = None
            self._size = 0
        else:
            frames = self._take()
        try:
            if isinstance(frames, bytes):
                unsent = sync.write_now(frames)
            else:
                # Several frames, one socket write: a /api/batch of 300 publications to a
                # connection leaves as 19 frames in one send, where it left as one frame of
                # 300 before the cap. Measured (`python -m bench --scenarios fanout,personal
                # --no-sio --repeat 3`, medians, 2 cores): personal saturate app/spublish
                # 9.20 CPU s per 1M deliveries at 12.4 msgs/frame against 8.89 uncapped at
                # 42.4 (CENTRIFUGO_PY_BENCH_MAX_MESSAGES_IN_FRAME=-1), fanout saturate
                # 1.90 against 2.04: level within the run-to-run noise. A write_now per
                # frame instead cost 0.62 against 0.56 us per message (40 queued, uvloop).
                unsent = sync.write_many_now(frames)
        except WRITE_ERRORS:
            self._fail(Disconnect(DISCONNECT_WRITE_ERROR))
            return
        if self._stall is not None:
            if isinstance(frames, bytes):
                self._stall_written += len(frames) + FRAME_OVERHEAD
            else:
                self._stall_written += sum(map(len, frames)) + FRAME_OVERHEAD * len(frames)
        elif unsent:
            self._arm_stall()
        if unsent > self._max_size > 0:
            self._fail(Disconnect(DISCONNECT_SLOW))

    def _arm_stall(self) -> None:
        """Bytes the transport holds now must be taken by the kernel within its
        write_timeout (Centrifugo sets that deadline on each write)."""
        assert self._sync is not None  # armed by the synchronous path only
        timeout = self._sync.write_timeout
        if timeout > 0:
            self._stall_written = 0
            self._stall = self._loop.call_later(timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._stall = None
        if self._closed or self._sync is None:
            return
        unsent = self._sync.unsent()
        # Of what the transport holds, at most `_stall_written` bytes were written since
        # the timer was armed: anything more is older, and waited the whole timeout.
        if unsent > self._stall_written:
            self._fail(Disconnect(DISCONNECT_WRITE_ERROR, detail="write timeout"))
        elif unsent:
            self._arm_stall()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    async def _write_async(self) -> None:
        try:
            while self._buf is not None:
                frames = self._take()
                try:
                    if isinstance(frames, bytes):
                        await self._transport.write(frames)
                    else:  # one write (one flush of the stream) per frame, as centrifuge
                        for frame in frames:
                            await self._transport.write(frame)
                except WRITE_ERRORS:
                    self._fail(Disconnect(DISCONNECT_WRITE_ERROR))
                    return
        finally:
            self._task = None

    def _fail(self, disconnect: Disconnect) -> None:
        self._cancel_stall()
        self._closed = True
        self._buf = None
        self._size = 0
        self._on_error(disconnect)

    def counter(self, frame_type: str, namespace: str = "") -> metrics.MessageCounter | None:
        """The sent-messages counter of this writer's transport for these labels."""
        return metrics.sent(self._transport_name, frame_type, namespace)

    def reopen_for_last(self) -> None:
        """Allow one more message (the disconnect push) after an overflow closed us."""
        self._closed = False
        self._max_size = 0

    async def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (the async path: best effort within timeout), then stop."""
        self._closed = True
        if self._sync is not None:
            self._flush()
            # From here the transport's close bounds the time (app/transports/closing.py).
            self._cancel_stall()
            return
        if self._buf is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_async())
        task = self._task
        if task is None:
            return
        await asyncio.wait((task,), timeout=timeout)
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # unlike `await task`, keeps our own cancellation
