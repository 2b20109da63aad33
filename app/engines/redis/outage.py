"""How a loop that keeps trying to reach Redis paces itself and reports an outage.

Used by the PUB/SUB supervisor (app/engines/redis/pubsub.py) and the broker's first contact
with a shard (app/engines/redis/broker.py): the pause before each next attempt doubles from
50 ms to 2 s, and an outage is one warning when it starts and one info line when it ends
(attempts in between log at debug), not a warning every attempt.
"""

from __future__ import annotations

import logging

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class Outage:
    __slots__ = ("_log", "_what", "failures", "_backoff")

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failures = 0  # attempts failed in a row
        self._backoff = BACKOFF_MIN

    def failed(self, error: BaseException) -> float:
        """Log a failed attempt; returns how long to wait before the next one."""
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        self._log.log(level, "%s unreachable, retrying: %r", self._what, error)
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return delay

    def ended(self) -> None:
        """An attempt succeeded: the outage (if any) is over."""
        if self.failures:
            self._log.info("%s reached after %d failed attempt(s)", self._what, self.failures)
        self.failures = 0
        self._backoff = BACKOFF_MIN
