"""Metric updates counted in this process first and added to prometheus-client's shared
multiprocess values at most once a second: the hot paths' counters (`MessageCounter`, once
per message per subscriber; `BufferedCounter`, once per publication) and histograms
(`BufferedHistogram`, once per publication).
`flush_buffered` adds everything now; the node's upkeep runs it every second, so a pause in
traffic leaves nothing unflushed. app/metrics.py hands these out per label set.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from typing import Any

# Everything counted in-process first (every _Buffered below): flushed together.
_FLUSHABLE: list[_Buffered] = []


class _Buffered(ABC):
    """What the buffers share: registration with `flush_buffered`, and the once-a-second
    schedule. A subclass's hot-path method counts, then flushes when `_due` has passed
    (the check stays inline there: one comparison per call); `_add` hands what was
    counted to prometheus-client's shared values."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due = time.monotonic() + 1.0
        _FLUSHABLE.append(self)

    def flush(self, now: float = 0.0) -> None:
        self._due = (now or time.monotonic()) + 1.0
        self._add()

    @abstractmethod
    def _add(self) -> None:
        """Adds what was counted since the last flush to the shared values, and resets it."""


class MessageCounter(_Buffered):
    """The (count, bytes) pair of transport message counters of one label set, counted in
    this process and added to the shared values at most once a second (and by
    `flush_buffered`, which the node's upkeep runs every second). `add` runs once per
    message per subscriber on the fan-out path: two multiprocess increments there cost
    2 µs (1.02 µs each, measured: 200k incs with PROMETHEUS_MULTIPROC_DIR set), buffered
    ~0.15 µs."""

    __slots__ = ("_count", "_size", "_n", "_bytes")

    def __init__(self, count: Any, size: Any) -> None:
        self._count = count
        self._size = size
        self._n = 0
        self._bytes = 0
        super().__init__()

    def add(self, size: int) -> None:
        self._n += 1
        self._bytes += size
        now = time.monotonic()
        if now >= self._due:
            self.flush(now)

    def _add(self) -> None:
        if self._n:
            self._count.inc(self._n)
            self._size.inc(self._bytes)
            self._n = self._bytes = 0


class BufferedCounter(_Buffered):
    """A counter child's increments counted in this process and added to the shared value
    at most once a second (and by `flush_buffered`), as MessageCounter does for its pair:
    for counters that move once per publication (node_messages_received_count), where a
    multiprocess inc() costs ~1 µs."""

    __slots__ = ("_child", "_n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._n = 0
        super().__init__()

    def inc(self, n: int = 1) -> None:
        self._n += n
        now = time.monotonic()
        if now >= self._due:
            self.flush(now)

    def _add(self) -> None:
        if self._n:
            self._child.inc(self._n)
            self._n = 0


class BufferedHistogram(_Buffered):
    """A histogram child's observations kept in this process and added to the shared
    multiprocess values at most once a second, or when `flush_buffered` runs (the node's
    upkeep calls it every second, so a pause in traffic leaves nothing unflushed).

    Why: observe() on a multiprocess Histogram writes the sum and a bucket to mmap files,
    2.8 µs (measured: 200k observes, PROMETHEUS_MULTIPROC_DIR set, this machine), which the
    broadcast duration pays once per publication: +36 % of worker CPU per delivery on the
    personal-channels bench (7.85 → 10.7 µs). A bisect and two additions here cost ~0.3 µs.
    Reads prometheus_client's own `_upper_bounds`, `_buckets` and `_sum` (no public API adds
    a count in one step)."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False
        super().__init__()

    def observe(self, value: float) -> None:
        # The first bound >= value: prometheus_client's `value <= bound` (the last is +Inf).
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._pending = True
        now = time.monotonic()
        if now >= self._due:
            self.flush(now)

    def _add(self) -> None:
        if not self._pending:
            return
        child = self._child
        for i, n in enumerate(self._counts):
            if n:
                child._buckets[i].inc(n)
                self._counts[i] = 0
        child._sum.inc(self._sum)
        self._sum = 0.0
        self._pending = False


def flush_buffered() -> None:
    """Add every buffered count and observation to the shared values (see BufferedHistogram,
    MessageCounter)."""
    for buf in _FLUSHABLE:
        buf.flush()
