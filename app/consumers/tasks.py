"""The background tasks of one consumer and how they stop without losing a message.

`ConsumerTasks` owns a consumer's tasks. A task marks the span from a message's dispatch to
its acknowledgement with `async with tasks.critical():`; `stop()` sets `stopping`, waits (up
to `grace` seconds) until no task is inside such a span, then cancels every task. A task
cancelled outside a critical span has executed nothing it did not acknowledge, so stopping
never turns into a duplicate; one cancelled inside (grace exceeded) leaves its message
unacknowledged, to be delivered again (at least once). Loops wait with `sleep()`, which a
stop cuts short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["ConsumerTasks"]

log = logging.getLogger("centrifugo.consumers")


class ConsumerTasks:
    def __init__(self, name: str, grace: float = 10.0) -> None:
        self.name = name
        self.grace = grace
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inside = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"consumer {self.name}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug in a consumer loop (loops catch backend errors themselves): say so once.
            log.error("%s stopped: %r", task.get_name(), task.exception())

    @asynccontextmanager
    async def critical(self) -> AsyncIterator[None]:
        """Dispatch-to-acknowledgement span: a stop waits for it to end. Entered after a stop
        began, it cancels the task instead (nothing dispatched yet)."""
        if self.stopping.is_set():
            raise asyncio.CancelledError
        self._inside += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inside -= 1
            if self._inside == 0:
                self._idle.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when a stop began meanwhile (or before)."""
        if self.stopping.is_set():
            return True
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self.stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), self.grace)
        except TimeoutError:
            log.warning("consumer %s: a message still in flight after %.0fs", self.name, self.grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
