"""The `postgresql` consumer: a transactional outbox table read partition by partition
(Centrifugo's internal/consuming/postgresql.go, step by step, with asyncpg for pgx).

The table is the backend's; Centrifugo's documented shape:

    CREATE TABLE centrifugo_outbox (
        id BIGSERIAL PRIMARY KEY,
        method text NOT NULL,          -- API method; '' means payload is {"method","payload"}
        payload JSONB NOT NULL,        -- the method's request (json, text or bytea work too)
        partition INTEGER NOT NULL default 0,
        created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL
    );

One task per partition (`num_partitions`) repeats one transaction (READ COMMITTED):

1. take the partition's advisory lock, `pg_advisory_xact_lock(hashtext(
   'centrifugo_partition_lock_<consumer name><partition>'))` (Centrifugo's key, so this server
   and Centrifugo nodes can share one outbox), or `pg_try_advisory_xact_lock` with
   `use_try_lock` (then a partition held elsewhere is skipped until the next wake-up). The
   lock is what makes one worker, of every worker of every node, read a partition at a time;
2. select up to `partition_select_limit` rows of the partition by `id`;
3. dispatch them in that order; the first that must be retried (`Retry`, an internal error)
   stops the batch;
4. delete the dispatched rows and commit; after a `Retry` wait the next backoff
   (10 ms .. 5 s) and start again from the row that failed.

So a row is deleted only in the transaction that saw its command done, rows run in `id`
order per partition, and a worker killed between a publish and the commit leaves its rows
(and its lock, released by PostgreSQL with the connection) to the next holder: that row is
delivered again, which an `idempotency_key` in its payload turns into no second publication.

A partition that returned fewer rows than the limit waits `partition_poll_interval`, or less
when a `NOTIFY <partition_notification_channel>, '<partition>'` arrives on the one LISTEN
connection (`partition_notification_dsn` or `dsn`), which reconnects every second while it
cannot. Backend outages are logged once per attempt and counted in
`centrifugo_consumers_errors_total`; nothing here stops on them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from app.config.schema_consumers import ConsumerConfig, PostgresConsumerConfig
from app.consumers import Consumer, ConsumerContext
from app.consumers import metrics as consumer_metrics
from app.consumers.backoff import Backoff
from app.consumers.dispatch import Retry
from app.consumers.tasks import ConsumerTasks
from app.engines.postgres.errors import DB_ERRORS
from app.tls import ssl_context

__all__ = ["PostgresConsumer", "create_consumer", "lock_name"]

log = logging.getLogger("centrifugo.consumers.postgresql")

DEFAULT_NUM_PARTITIONS = 1
DEFAULT_SELECT_LIMIT = 100
DEFAULT_POLL_INTERVAL = 0.3
LISTEN_RETRY = 1.0  # Centrifugo waits a second before listening again
LISTEN_CHECK = 1.0  # how often the LISTEN connection is checked for loss
CONNECT_TIMEOUT = 10.0  # Centrifugo's ping timeout at start
COMMAND_TIMEOUT = 60.0


def lock_name(consumer: str, partition: int) -> str:
    """The advisory lock key of a partition, hashed by PostgreSQL's hashtext (Centrifugo's)."""
    return f"centrifugo_partition_lock_{consumer}{partition}"


class _LockNotAcquired(Exception):
    pass


def _payload_bytes(value: Any) -> bytes:
    # jsonb/json/text come back as str (no codec set), bytea as bytes.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b""


class PostgresConsumer:
    def __init__(self, name: str, cfg: PostgresConsumerConfig, ctx: ConsumerContext) -> None:
        self._name = name
        self._cfg = cfg
        self._dispatcher = ctx.dispatcher
        self._partitions = cfg.num_partitions or DEFAULT_NUM_PARTITIONS
        self._limit = cfg.partition_select_limit or DEFAULT_SELECT_LIMIT
        self._poll = float(cfg.partition_poll_interval) or DEFAULT_POLL_INTERVAL
        ssl = ssl_context(cfg.tls, f"consumers[{name}].postgresql.tls")
        # command_timeout: a query on a connection that died without a word fails instead of
        # hanging the partition; a lock wait is one batch of another holder at most.
        self._connect: dict[str, Any] = {
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
        }
        if ssl is not None:
            self._connect["ssl"] = ssl
        table = cfg.outbox_table_name  # as Centrifugo: the configured name, unquoted
        self._select = (
            f"SELECT id, method, payload FROM {table} WHERE partition=$1 ORDER BY id ASC LIMIT $2"
        )
        self._delete = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
        self._lock = (
            "SELECT pg_try_advisory_xact_lock(hashtext($1))"
            if cfg.use_try_lock
            else "SELECT pg_advisory_xact_lock(hashtext($1))"
        )
        self._tasks = ConsumerTasks(name)
        self._wake = [asyncio.Event() for _ in range(self._partitions)]
        self._pool: asyncpg.Pool | None = None

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        # min_size=0: the pool connects on first use, so an unreachable database delays the
        # first batch instead of failing the worker; a broken connection is replaced there.
        self._pool = asyncpg.create_pool(
            self._cfg.dsn, min_size=0, max_size=self._partitions, **self._connect
        )
        await self._pool
        for partition in range(self._partitions):
            self._tasks.spawn(self._partition_loop(self._pool, partition), f"partition {partition}")
        if self._cfg.partition_notification_channel:
            self._tasks.spawn(self._listen(), "listen")

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    # --- the partitions ---

    async def _partition_loop(self, pool: asyncpg.Pool, partition: int) -> None:
        backoff = Backoff()
        wake = self._wake[partition]
        while True:
            try:
                done = await self._process_once(pool, partition)
            except _LockNotAcquired:
                await self._wait(wake)
                continue
            except (Retry, *DB_ERRORS) as e:
                consumer_metrics.error(self._name)
                delay = backoff.next()
                log.error(
                    "consumer %s: partition %d: %s, retrying in %.3fs",
                    self._name,
                    partition,
                    _describe(e),
                    delay,
                )
                await self._tasks.sleep(delay)
                continue
            except Exception:
                # A fault of this code, not of the database: say it loudly, keep the
                # partition alive.
                consumer_metrics.error(self._name)
                log.exception("consumer %s: partition %d failed", self._name, partition)
                await self._tasks.sleep(backoff.next())
                continue
            consumer_metrics.processed(self._name, done)
            backoff.reset()
            if done < self._limit:
                # Fewer rows than the limit: the partition is drained for now.
                await self._wait(wake)

    async def _wait(self, wake: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(wake.wait(), self._poll)
        except TimeoutError:
            pass
        wake.clear()

    async def _process_once(self, pool: asyncpg.Pool, partition: int) -> int:
        """One transaction over one partition: the number of rows dispatched and deleted.
        Raises `Retry` after committing the rows dispatched before the failing one."""
        async with pool.acquire() as conn:
            tx = conn.transaction(isolation="read_committed")
            await tx.start()
            try:
                acquired = await conn.fetchval(self._lock, lock_name(self._name, partition))
                if self._cfg.use_try_lock and not acquired:
                    raise _LockNotAcquired
                rows = await conn.fetch(self._select, partition, self._limit)
                if not rows:
                    await tx.rollback()
                    return 0
                async with self._tasks.critical():
                    done, retry = await self._dispatch(rows)
                    if done:
                        await conn.execute(self._delete, done)
                    await tx.commit()
            except BaseException:
                if not conn.is_closed():
                    await _rollback_quietly(tx)
                raise
        if retry is not None:
            raise retry
        return len(done)

    async def _dispatch(self, rows: list[asyncpg.Record]) -> tuple[list[int], Retry | None]:
        done: list[int] = []
        for row in rows:
            try:
                await self._dispatcher.dispatch_command(
                    row["method"] or "", _payload_bytes(row["payload"])
                )
            except Retry as e:
                # Stop here: rows before it are deleted, this one is the next batch's first.
                return done, e
            done.append(row["id"])
        return done, None

    # --- LISTEN/NOTIFY wake-ups ---

    async def _listen(self) -> None:
        channel = self._cfg.partition_notification_channel
        dsn = self._cfg.partition_notification_dsn or self._cfg.dsn
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn, **self._connect)
                await conn.add_listener(channel, self._on_notify)
                # Rows may have come while nobody listened: every partition looks once.
                for wake in self._wake:
                    wake.set()
                while not conn.is_closed():
                    if await self._tasks.sleep(LISTEN_CHECK):
                        return
                raise ConnectionError("listen connection lost")
            except DB_ERRORS as e:
                consumer_metrics.error(self._name)
                log.error(
                    "consumer %s: error listening outbox notifications: %s",
                    self._name,
                    _describe(e),
                )
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=1.0)
            if await self._tasks.sleep(LISTEN_RETRY):
                return

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            partition = int(payload)
        except ValueError:
            log.error(
                "consumer %s: notification payload %r is not a partition", self._name, payload
            )
            return
        if not 0 <= partition < self._partitions:
            log.error("consumer %s: outbox partition %d is out of range", self._name, partition)
            return
        self._wake[partition].set()


async def _rollback_quietly(tx: Any) -> None:
    try:
        await tx.rollback()
    except DB_ERRORS:
        pass  # the connection is gone: PostgreSQL rolled back itself


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def create_consumer(cfg: ConsumerConfig, ctx: ConsumerContext) -> Consumer:
    return PostgresConsumer(cfg.name, cfg.postgresql, ctx)
