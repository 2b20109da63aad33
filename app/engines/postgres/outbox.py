"""The fan-out of the PostgreSQL brokers (map broker, stream broker): every node reads the
stream table itself (Centrifugo's outbox workers without an inner Broker, pgoutbox.Worker).

Each write draws its stream row id while holding its shard's row lock to commit
(schema.sql), so within a shard ids become visible in id order. The reader keeps one
cursor per shard (the last id it handed on) and asks, in one round trip for all shards,
for the rows after each cursor, oldest first, at most `batch_size` per shard. No row is
skipped, none read twice: every node delivers every change exactly once, in offset order
per channel (a channel lives in one shard). Cursors start at the table's MAX(id) when the
reader starts: what was written before is for readers of the stream, not for delivery.

It reads again at once while a batch came back full, else after `poll_interval`, or
earlier when a NOTIFY on the variant's channel arrives (`use_notify`: a connection of its
own, to `notify_dsn` when set, reconnected with backoff; polling covers its outages).

Rows go to `on_rows` (the broker decodes and delivers them); a failing read is logged
once per outage and retried after `poll_interval`, and `healthy` is false meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from app.engines.postgres.errors import DB_ERRORS

log = logging.getLogger("centrifugo.postgres")

# The map stream's columns the map broker decodes (maps.py publication_of reads them by name).
COLUMNS = (
    "id, shard_id, channel, channel_offset, epoch, key, data, tags, removed, "
    "client_id, user_id, conn_info, chan_info, prev_data, created_at"
)
_NOTIFY_BACKOFF_MAX = 30.0

RowsHandler = Callable[[Sequence[asyncpg.Record]], None]


class Outbox:
    def __init__(
        self,
        pool: asyncpg.Pool,
        stream_table: str,
        notify_channel: str,
        num_shards: int,
        on_rows: RowsHandler,
        *,
        poll_interval: float = 0.1,
        batch_size: int = 1000,
        notify_connect: Callable[[], Any] | None = None,
        columns: str = COLUMNS,
        label: str = "map broker",
    ) -> None:
        """`notify_connect`: a coroutine function opening the LISTEN connection; None:
        polling only (Centrifugo's use_notify false). `columns`: what a row carries to
        `on_rows` (id and shard_id among them); `label`: the broker, in log lines."""
        self._pool = pool
        self._stream_table = stream_table
        self._num_shards = num_shards
        self._label = label
        self._notify_channel = notify_channel
        self._on_rows = on_rows
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._notify_connect = notify_connect
        self._shards = list(range(num_shards))
        self._cursors = [0] * num_shards
        self._query = (
            f"SELECT s.* FROM unnest($1::int[], $2::bigint[]) AS c(shard, cursor) "
            f"CROSS JOIN LATERAL (SELECT {columns} FROM {stream_table} "
            f"WHERE shard_id = c.shard AND id > c.cursor ORDER BY id LIMIT $3) s"
        )
        self._max_id = f"SELECT COALESCE(MAX(id), 0) FROM {stream_table}"
        self._wake = asyncio.Event()
        self._reading = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.healthy = True
        self.listening = asyncio.Event()  # set while LISTEN is in place (tests await it)

    async def start(self) -> None:
        """Cursors at the current end of the stream, then read in the background: every
        row committed after this returns is delivered (raises while PostgreSQL is away)."""
        top = await self._pool.fetchval(self._max_id)
        self._cursors = [top] * len(self._shards)
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._read_loop(), name=f"pg-outbox {self._stream_table}")
        )
        if self._notify_connect is not None:
            self._tasks.append(
                loop.create_task(self._listen_loop(), name=f"pg-listen {self._stream_table}")
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def tops(self, channels: list[str]) -> dict[str, int]:
        """Each channel's shard's last committed row id: the rows a subscription made now
        must not get (they were committed before it), as PUB/SUB would not deliver them."""
        rows = await self._pool.fetch(
            f"SELECT c.channel, (SELECT COALESCE(MAX(id), 0) FROM {self._stream_table} "
            f"WHERE shard_id = abs(hashtext(c.channel)::bigint) % $2) AS top "
            f"FROM unnest($1::text[]) AS c(channel)",
            channels,
            self._num_shards,
        )
        return {row["channel"]: row["top"] for row in rows}

    def wake(self) -> None:
        """Read now rather than at the next poll."""
        self._wake.set()

    async def read_once(self) -> int:
        """One read of every shard past its cursor; returns the rows handed on. Reads never
        overlap: two at once from the same cursors would hand the same rows on twice."""
        async with self._reading:
            rows = await self._pool.fetch(
                self._query, self._shards, self._cursors, self._batch_size
            )
            if not rows:
                return 0
            # Rows come shard by shard, ids ascending within each: cursors are the last seen.
            for row in rows:
                self._cursors[row["shard_id"]] = row["id"]
            self._on_rows(rows)
            return len(rows)

    async def _read_loop(self) -> None:
        failing = False
        while True:
            self._wake.clear()
            try:
                n = await self.read_once()
            except DB_ERRORS as e:
                if not failing:
                    log.warning("%s outbox read failed, retrying: %r", self._label, e)
                failing, self.healthy = True, False
                n = 0
            except Exception:
                # A delivery bug must not stop the fan-out; the cursor has moved past it.
                log.exception("%s outbox delivery failed", self._label)
                n = 0
            else:
                if failing:
                    log.info("%s outbox reads again", self._label)
                failing, self.healthy = False, True
            if n >= self._batch_size:
                continue  # one shard at least had more: no waiting
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as the wake-up does (close() then waited forever on this task).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()

    async def _listen_loop(self) -> None:
        assert self._notify_connect is not None
        backoff = 1.0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._notify_connect()
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                def on_lost(_conn: Any, lost: asyncio.Future[None] = lost) -> None:
                    if not lost.done():
                        lost.set_result(None)

                conn.add_termination_listener(on_lost)
                await conn.add_listener(self._notify_channel, lambda *_: self._wake.set())
                backoff = 1.0
                self.listening.set()
                self._wake.set()  # anything written while not listening
                await lost
            except DB_ERRORS as e:
                log.warning("%s LISTEN connection failed, retrying: %r", self._label, e)
            except Exception:
                # Whatever else goes wrong, LISTEN is tried again: ended, this loop would
                # leave the node polling alone for good.
                log.exception("%s LISTEN connection failed, retrying", self._label)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _NOTIFY_BACKOFF_MAX)
