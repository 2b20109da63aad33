"""Sign-in attempts limited per client address, so `admin.password` cannot be guessed at
network speed (Centrifugo has no such limit; an operator would expect one).

A token bucket per address: `BURST` attempts at once, then one per `REFILL` seconds. The
table is bounded: at most `MAX_ADDRESSES` addresses are remembered (the oldest forgotten
first), so a flood of spoofed sources costs a bounded amount of memory. Per worker: each
gunicorn worker keeps its own table, so the bound on guesses is per worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict

BURST = 5
REFILL = 12.0  # seconds per attempt once the burst is spent: 5 attempts a minute
MAX_ADDRESSES = 10_000


class LoginLimiter:
    def __init__(
        self, burst: int = BURST, refill: float = REFILL, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self._burst = burst
        self._refill = refill
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> bool:
        """Take one attempt from `address`'s bucket; False when it is empty."""
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(address, (float(self._burst), t))
        tokens = min(float(self._burst), tokens + (t - last) / self._refill)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[address] = (tokens, t)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again (for the Retry-After header)."""
        tokens, _ = self._buckets.get(address, (1.0, 0.0))
        return max(1, int((1.0 - tokens) * self._refill + 0.999))
