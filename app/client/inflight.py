"""`client.concurrency`: one connection's commands running as tasks, at most N at once.

Centrifugo (internal/client/handler.go, runConcurrentlyIfNeeded) runs refresh, rpc,
subscribe, sub_refresh, publish, presence, presence_stats and history of a connection in
goroutines when `client.concurrency` > 1, taking a slot of an N-slot semaphore in the reader
first: a client with N commands in flight has its reading paused, so it cannot queue more
work than N commands. Replies carry ids and go out as the commands finish.

`InFlight` is that semaphore and the tasks holding its slots. It is made at a connection's
first concurrent command (an idle connection holds none) and cancelled when the connection
closes, so that nothing a command would still do (a proxy call, a subscription) outlives it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("centrifugo.client")

# The commands Centrifugo runs concurrently (rpc only where an RPC handler exists: a proxy
# or the rpc.ping extension; otherwise centrifuge answers it in the reader).
CONCURRENT = frozenset(
    {
        "refresh",
        "rpc",
        "subscribe",
        "sub_refresh",
        "publish",
        "presence",
        "presence_stats",
        "history",
    }
)


class InFlight:
    __slots__ = ("_slots", "_tasks")

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def acquire(self) -> None:
        """Wait for a free slot (the reader waits here with N commands in flight)."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a slot taken by `acquire` without starting a task."""
        self._slots.release()

    def start(
        self, coro: Coroutine[Any, Any, Any], inner: Coroutine[Any, Any, Any] | None = None
    ) -> None:
        """Run `coro` in a task holding the slot taken by `acquire` until it ends. `inner`,
        the coroutine `coro` awaits, is closed with it: a task cancelled before its first
        step never awaits it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, inner))

    def _done(self, task: asyncio.Task[Any], inner: Coroutine[Any, Any, Any] | None) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if inner is not None:
            inner.close()  # a no-op once it ran
        if not task.cancelled() and task.exception() is not None:
            log.error("client command failed", exc_info=task.exception())

    def cancel(self) -> None:
        """Cancel every command in flight but the calling one (a command that closes its
        connection is itself in flight)."""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
