"""Retry pacing of consumers: Centrifugo's getNextBackoffDuration (internal/consuming/
backoff.go), and the retry loop of one delivery built on it.

A failed attempt waits `(10 ms + jitter in [0, 10 ms)) * 2**retries`, at most 5 s, and once
at 5 s stays there. `dispatch_until_done` is the loop a consumer runs for one message whose
acknowledgement waits on the dispatch (Redis stream entries, JetStream and Kafka messages):
it returns only when the dispatch is done (`True`) or the consumer is stopping (`False`,
message left unacknowledged for redelivery), so a message is never dropped and a dispatch
that returned is never repeated for that delivery.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from app.consumers import metrics
from app.consumers.dispatch import Retry

__all__ = ["MIN_BACKOFF", "MAX_BACKOFF", "next_backoff", "Backoff", "dispatch_until_done"]

log = logging.getLogger("centrifugo.consumers")

MIN_BACKOFF = 0.010
MAX_BACKOFF = 5.0


def next_backoff(current: float, retries: int) -> float:
    """Centrifugo's getNextBackoffDuration: the wait (seconds) after `current` for the
    `retries`-th failure in a row."""
    if current >= MAX_BACKOFF:
        return MAX_BACKOFF
    jitter = random.randrange(int(MIN_BACKOFF * 1000)) / 1000
    return min((MIN_BACKOFF + jitter) * (1 << min(retries, 30)), MAX_BACKOFF)


class Backoff:
    """Successive waits after failures; `reset()` after a success."""

    __slots__ = ("_current", "retries")

    def __init__(self) -> None:
        self._current = 0.0
        self.retries = 0

    def next(self) -> float:
        """The wait before the next attempt (counts one more failure)."""
        self.retries += 1
        self._current = next_backoff(self._current, self.retries)
        return self._current

    def reset(self) -> None:
        self._current = 0.0
        self.retries = 0


async def dispatch_until_done(
    name: str, attempt: Callable[[], Awaitable[None]], stopping: asyncio.Event
) -> bool:
    """Run `attempt` (one dispatch of one message) until it returns; on `Retry` count the
    error, log one line and wait the next backoff. False when `stopping` is set first."""
    backoff = Backoff()
    while not stopping.is_set():
        try:
            await attempt()
            return True
        except Retry as e:
            metrics.error(name)
            delay = backoff.next()
            log.error(
                "consumer %s: %s, retrying in %.3fs (attempt %d)", name, e, delay, backoff.retries
            )
        try:
            await asyncio.wait_for(stopping.wait(), delay)
        except TimeoutError:
            pass
    return False
