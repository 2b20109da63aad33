"""Per-connection outgoing queue.

Messages queued in one event-loop turn leave as one frame (newline-joined), so a
burst of replies and pushes costs one socket write. The queue is bounded in bytes:
a client that does not read fast enough is disconnected with 3008 instead of
growing memory or slowing the fan-out for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from app import metrics
from app.errors import DISCONNECT_SLOW, DISCONNECT_WRITE_ERROR, Disconnect
from app.protocol import Codec


class Transport(Protocol):
    """A socket owned by a transport handler (WebSocket, SSE, ...)."""

    name: str  # "websocket", "sse", ...
    codec: Codec  # how this connection's frames are encoded
    unidirectional: bool  # server-to-client only: no commands, no pongs
    disconnect_push: bool  # signal disconnects with a push before closing (all but bidi WS)
    # Optional `pings = False`: the transport keeps itself alive (uni_grpc).

    async def write(self, frame: bytes) -> None: ...

    def reopen_for_last(self) -> None:
        """Allow one more message (the disconnect push) after an overflow closed us."""
        self._closed = False
        self._max_size = 0

    async def close(self, disconnect: Disconnect) -> None: ...


class Writer:
    __slots__ = (
        "_transport",
        "_buf",
        "_size",
        "_max_size",
        "_wake",
        "_task",
        "_on_error",
        "_closed",
        "_idle",
        "_sep",
        "_m_sent",
        "_m_sent_size",
    )

    def __init__(
        self,
        transport: Transport,
        max_size: int,
        on_error: Callable[[Disconnect], None],
    ) -> None:
        self._transport = transport
        self._sep = transport.codec.separator
        self._m_sent = metrics.child(metrics.TRANSPORT_SENT, transport.name, "", "")
        self._m_sent_size = metrics.child(metrics.TRANSPORT_SENT_SIZE, transport.name, "", "")
        self._buf: list[bytes] = []
        self._size = 0
        self._max_size = max_size
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._on_error = on_error
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue(self, data: bytes) -> None:
        if self._closed:
            return
        buf = self._buf
        if not buf:
            # Only the first message of a batch wakes the writer; the rest just join it.
            self._idle.clear()
            self._wake.set()
        buf.append(data)
        self._size += len(data)
        if self._max_size > 0 and self._size > self._max_size:
            self._closed = True
            buf.clear()
            self._on_error(Disconnect(DISCONNECT_SLOW))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buf:
                batch = self._buf
                self._buf = []
                self._size = 0
                frame = batch[0] if len(batch) == 1 else self._sep.join(batch)
                # Counted per frame, not per message: cheap on the fan-out path.
                self._m_sent.inc(len(batch))
                self._m_sent_size.inc(len(frame))
                try:
                    await self._transport.write(frame)
                except (ConnectionError, RuntimeError, OSError):
                    self._closed = True
                    self._on_error(Disconnect(DISCONNECT_WRITE_ERROR))
                    return
            self._idle.set()

    def reopen_for_last(self) -> None:
        """Allow one more message (the disconnect push) after an overflow closed us."""
        self._closed = False
        self._max_size = 0

    async def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (best effort within timeout), then stop."""
        self._closed = True
        if not self._idle.is_set() and not self._task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
