"""The soak's paced publisher: POST /api/publish with an idempotency key per publication.

Publication n goes to channel `n % channels` with data `{"id":n,"big":<BIG>}` and idempotency key
`chaos-<run>-<n>`. An attempt that fails in any way (connection refused or reset, timeout,
HTTP 5xx, an error in the reply) is retried with the same key until the server answers with a
result or `give_up_s` passes: the server may have applied a publish whose answer was lost
(a worker killed mid-request, a frozen Redis that answers late), and the key makes the retry
return that same publication instead of a second one.

Pacing: one publication every 1/rate s, at most `max_in_flight` unacknowledged at once; while
the server is down the pacer waits for room instead of piling up retries.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.chaos.accounting import Ack

# Sent as these very bytes: a server that parses and re-dumps `data` instead of passing it
# through (issue 14 point 3) turns it into 1.2345678901234568e+29, which clients detect.
BIG = 123456789012345678901234567890
ATTEMPT_TIMEOUT_S = 6.0  # above the server's 4 s Redis timeout: its own error comes first
RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class Publisher:
    def __init__(
        self,
        api_url: str,
        api_key: str,
        channel_of: Callable[[int], str],
        rate: float,
        run_id: str,
        max_in_flight: int = 200,
        give_up_s: float = 120.0,
    ) -> None:
        self.api_url = api_url
        self.channel_of = channel_of
        self.rate = rate
        self.run_id = run_id
        self.give_up_s = give_up_s
        self.acks: dict[int, Ack] = {}
        self.pending: dict[int, float] = {}  # id -> time created
        self.gave_up: list[int] = []
        self.attempts = 0
        self.errors: Counter[str] = Counter()  # kind of failure -> count (each retried)
        self._room = asyncio.Semaphore(max_in_flight)
        self._next = 0
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Keep-alive connections: each stays on the worker that accepted it, so the calls
        # spread over the workers, and a killed worker fails the calls on its connections.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16),
            headers={"X-API-Key": api_key},
        )

    @property
    def published(self) -> int:
        return self._next

    def oldest_pending(self) -> float | None:
        return min(self.pending.values(), default=None)

    async def seed(self, channels: list[str]) -> None:
        """One publication per channel before clients subscribe, so every stream (and its
        epoch) exists when the first subscribe reply reports its position."""
        await asyncio.gather(*(self._publish_one(self._take(ch)) for ch in channels))

    def _take(self, channel: str | None = None) -> tuple[int, str]:
        n = self._next
        self._next += 1
        self.pending[n] = time.monotonic()
        return n, channel if channel is not None else self.channel_of(n)

    async def run(self) -> None:
        """Publish at `rate` until `stop()`."""
        interval = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            await self._room.acquire()
            if self._stop.is_set():
                self._room.release()
                break
            self._spawn(self._take(), paced=True)
            due = max(due + interval, time.monotonic() - 1.0)  # no burst after a stall
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass

    def probe(self, channels: list[str]) -> dict[str, int]:
        """One publication per channel now, outside the pacing; channel -> its id."""
        items = [self._take(ch) for ch in channels]
        for item in items:
            self._spawn(item, paced=False)
        return {ch: n for n, ch in items}

    def _spawn(self, item: tuple[int, str], paced: bool) -> None:
        task = asyncio.create_task(self._publish_one(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if paced:
            task.add_done_callback(lambda _: self._room.release())

    def stop(self) -> None:
        self._stop.set()

    async def finish(self, timeout: float) -> None:
        """Wait (bounded) for the publications still being retried, then give up on them."""
        self.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._session.close()

    async def _publish_one(self, item: tuple[int, str]) -> None:
        n, channel = item
        body = (
            f'{{"channel":"{channel}","data":{{"id":{n},"big":{BIG}}},'
            f'"idempotency_key":"chaos-{self.run_id}-{n}"}}'
        ).encode()
        started = time.monotonic()
        attempt = 0
        try:
            while True:
                self.attempts += 1
                result = await self._attempt(body)
                if result is not None:
                    self.acks[n] = Ack(channel, result["epoch"], result["offset"], time.monotonic())
                    return
                if time.monotonic() - started > self.give_up_s:
                    self.gave_up.append(n)
                    return
                await asyncio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                attempt += 1
        finally:
            self.pending.pop(n, None)

    async def _attempt(self, body: bytes) -> dict[str, Any] | None:
        """The publish result, or None after counting why there is none."""
        try:
            async with self._session.post(
                f"{self.api_url}/publish",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    self.errors[f"http {resp.status}"] += 1
                    return None
                reply = await resp.json()
        except TimeoutError:
            self.errors["timeout"] += 1
            return None
        except (aiohttp.ClientError, OSError) as e:
            self.errors[type(e).__name__] += 1
            return None
        if "error" in reply:
            self.errors[f"error {reply['error'].get('code')}"] += 1
            return None
        result = reply.get("result", {})
        if "offset" not in result or "epoch" not in result:
            self.errors["no position in result"] += 1
            return None
        return result
