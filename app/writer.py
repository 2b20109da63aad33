"""Per-connection outgoing queue.

Messages queued in one event-loop turn leave as one frame (joined by the codec's
separator), so a burst of replies and pushes costs one socket write.

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
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Protocol

from app import metrics
from app.errors import DISCONNECT_SLOW, DISCONNECT_WRITE_ERROR, Disconnect
from app.protocol import Codec

log = logging.getLogger("centrifugo.writer")

# What a transport raises when its peer is gone.
WRITE_ERRORS = (ConnectionError, RuntimeError, OSError)


class Transport(Protocol):
    """A socket owned by a transport handler (WebSocket, SSE, ...).

    Optional fast path: `write_now(frame) -> int` writes the frame synchronously and
    returns how many bytes the transport still holds unsent (the backpressure measure);
    it raises one of WRITE_ERRORS when the peer is gone. A transport without it (or with
    `write_now = None`) is written through the async `write`.
    """

    name: str  # "websocket", "sse", ...
    codec: Codec  # how this connection's frames are encoded
    unidirectional: bool  # server-to-client only: no commands, no pongs
    disconnect_push: bool  # signal disconnects with a push before closing (all but bidi WS)
    # Optional `pings = False`: the transport keeps itself alive (uni_grpc).

    async def write(self, frame: bytes) -> None: ...

    async def close(self, disconnect: Disconnect) -> None: ...


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
        "_m_sent",
        "_m_sent_size",
    )

    def __init__(
        self,
        transport: Transport,
        max_size: int,
        on_error: Callable[[Disconnect], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._transport = transport
        self._sync = getattr(transport, "write_now", None) is not None
        self._flusher = _flusher(loop or asyncio.get_running_loop())
        self._sep = transport.codec.separator
        self._m_sent = metrics.live(metrics.child(metrics.TRANSPORT_SENT, transport.name, "", ""))
        self._m_sent_size = metrics.live(
            metrics.child(metrics.TRANSPORT_SENT_SIZE, transport.name, "", "")
        )
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

    def enqueue(self, data: bytes) -> None:
        if self._closed:
            return
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

    def _take(self) -> bytes:
        """The queued messages as one frame; the queue is empty afterwards."""
        batch = self._buf
        self._buf = None
        self._size = 0
        if type(batch) is bytes:
            frame = batch
            count = 1
        else:
            frame = self._sep.join(batch)  # type: ignore[arg-type]
            count = len(batch)  # type: ignore[arg-type]
        if self._m_sent is not None:
            # Counted per frame, not per message: cheap on the fan-out path.
            self._m_sent.inc(count)
            self._m_sent_size.inc(len(frame))
        return frame

    def _flush(self) -> None:
        if self._buf is None:
            return  # already flushed by close(), or dropped by a failure
        if not self._sync:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._write_async())
            return  # else the task in flight takes the batch when its write is done
        try:
            unsent = self._transport.write_now(self._take())  # type: ignore[attr-defined]
        except WRITE_ERRORS:
            self._fail(Disconnect(DISCONNECT_WRITE_ERROR))
            return
        if unsent > self._max_size > 0:
            self._fail(Disconnect(DISCONNECT_SLOW))

    async def _write_async(self) -> None:
        try:
            while self._buf is not None:
                try:
                    await self._transport.write(self._take())
                except WRITE_ERRORS:
                    self._fail(Disconnect(DISCONNECT_WRITE_ERROR))
                    return
        finally:
            self._task = None

    def _fail(self, disconnect: Disconnect) -> None:
        self._closed = True
        self._buf = None
        self._size = 0
        self._on_error(disconnect)

    def reopen_for_last(self) -> None:
        """Allow one more message (the disconnect push) after an overflow closed us."""
        self._closed = False
        self._max_size = 0

    async def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (the async path: best effort within timeout), then stop."""
        self._closed = True
        if self._sync:
            self._flush()
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
