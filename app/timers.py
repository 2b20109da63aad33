"""Coarse timers for the deadlines every connection carries.

Each connection arms a few deadlines that almost never fire: the keepalive before its
upgrade, the stale timeout before its connect command, its next ping. On uvloop a
`call_later` plus its `cancel` costs ~3 µs (a libuv timer and a handle object each),
three times per connect. These deadlines tolerate firing a little late, so they are
grouped into ticks of `TICK` seconds: arming one is a dict insert, cancelling it a dict
pop, and the loop holds one timer per tick that has deadlines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TICK = 0.05  # a deadline fires at most this much late (and never before a loop timer would)


class CoarseTimer:
    """One armed deadline; `cancel()` is safe to call any number of times."""

    __slots__ = ("_bucket", "_callback", "_args")

    def __init__(
        self, bucket: dict[CoarseTimer, None], callback: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        self._bucket: dict[CoarseTimer, None] | None = bucket
        self._callback = callback
        self._args = args

    def cancel(self) -> None:
        bucket = self._bucket
        if bucket is not None:
            self._bucket = None
            bucket.pop(self, None)


class CoarseTimers:
    """`call_later` for deadlines that may fire up to one tick late."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = TICK) -> None:
        self._loop = loop
        self._tick = tick
        self._buckets: dict[int, dict[CoarseTimer, None]] = {}

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> CoarseTimer:
        # The first tick at or after the deadline.
        slot = -int(-(self._loop.time() + delay) // self._tick)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            self._loop.call_at(slot * self._tick, self._fire, slot)
        timer = CoarseTimer(bucket, callback, args)
        bucket[timer] = None
        return timer

    def _fire(self, slot: int) -> None:
        bucket = self._buckets.pop(slot)
        # One at a time: a callback may cancel a later timer of the same tick.
        while bucket:
            timer, _ = bucket.popitem()
            timer._bucket = None
            try:
                timer._callback(*timer._args)
            except Exception:
                log.exception("timer callback %r failed", timer._callback)

    def pending(self) -> int:
        """Armed timers (for tests)."""
        return sum(len(b) for b in self._buckets.values())
