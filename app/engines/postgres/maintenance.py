"""The PostgreSQL map broker's background upkeep (Centrifugo's pgmapbroker TTL expiration,
cleanup and partition workers), every node running it, none coordinating:

- every `ttl_check_interval` (1 s): up to 100 channels with keys past their TTL, and for
  each `<prefix>expire_keys` (schema.sql) with the channel's meta TTL from the node's
  config: the keys leave the state and their removals enter the stream in one
  transaction; the stream readers (outbox.py) deliver them like any removal. Row locks
  (SKIP LOCKED) make two nodes racing for a key produce one removal.
- every `cleanup_interval` (1 m): expired meta rows (the next write starts a new epoch)
  and idempotency results, in batches of 1000; today's and the lookahead partitions of
  the stream made, partitions older than `retention_days` dropped.

Failures are counted (map_broker_cleanup_errors_count, broker_name "postgres"), logged once
per outage, and tried again at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app import metrics
from app.engines.postgres.ddl import delete_expired, drop_old_partitions, ensure_partitions

if TYPE_CHECKING:
    from app.engines.postgres.maps import PostgresMapBroker

log = logging.getLogger("centrifugo.postgres.maps")

BROKER_NAME = "postgres"  # the metrics' broker_name label
CHANNELS_PER_TICK = 100  # Centrifugo's LIMIT 100
KEYS_PER_CHANNEL = 1000  # its p_batch_size


class Maintenance:
    def __init__(
        self,
        broker: PostgresMapBroker,
        *,
        ttl_check_interval: float,
        cleanup_interval: float,
        lookahead_days: int,
        retention_days: int,
    ) -> None:
        self._broker = broker
        self.ttl_check_interval = ttl_check_interval
        self.cleanup_interval = cleanup_interval
        self._lookahead_days = lookahead_days
        self._retention_days = retention_days
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ttl_check_interval > 0:
            self._tasks.append(loop.create_task(self._every(self.ttl_check_interval, self.expire)))
        if self.cleanup_interval > 0:
            self._tasks.append(loop.create_task(self._every(self.cleanup_interval, self.cleanup)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _every(self, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception as e:  # PostgreSQL away: tried at the next tick
                metrics.child(metrics.MAP_CLEANUP_ERRORS, BROKER_NAME).inc()
                if not failing:
                    log.warning("postgres map broker upkeep failed, retrying: %r", e)
                failing = True
            else:
                failing = False

    async def expire(self) -> int:
        """One expiry pass; returns how many keys were removed."""
        b = self._broker
        n = b.names
        pool = b.pool
        channels = await pool.fetch(
            f"SELECT DISTINCT channel FROM {n.state} "
            f"WHERE expires_at IS NOT NULL AND expires_at <= NOW() LIMIT {CHANNELS_PER_TICK}"
        )
        removed = 0
        for (channel,) in channels:
            chopts = b.options_of(channel)
            meta_ttl = None
            if chopts is not None and chopts.meta_ttl > 0:
                meta_ttl = dt.timedelta(milliseconds=max(round(chopts.meta_ttl * 1000), 1))
            rows = await pool.fetch(
                f"SELECT out_key FROM {n.expire_keys}($1, $2, $3::interval, $4)",
                KEYS_PER_CHANNEL,
                b.num_shards,
                meta_ttl,
                channel,
            )
            removed += len(rows)
        if removed:
            metrics.child(metrics.MAP_CLEANUP_REMOVED, BROKER_NAME).inc(removed)
            if b.outbox is not None:
                b.outbox.wake()  # without LISTEN, deliver the removals now
        return removed

    async def cleanup(self) -> None:
        n = self._broker.names
        pool = self._broker.pool
        await delete_expired(pool, n.meta, n.idempotency)
        async with pool.acquire() as conn:
            await ensure_partitions(conn, n.stream, self._lookahead_days)
            await drop_old_partitions(conn, n.stream, self._retention_days)
