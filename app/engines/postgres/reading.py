"""The life of a part that every node runs over one PostgreSQL table it reads (the stream
broker, the controller): a pool, the schema, an `Outbox` reader of the table, a periodic
cleanup, and the same rule for an outage at start: `start` returns all the same and the
setup is retried in the background (0.5 s doubling to 5 s), the part unhealthy meanwhile, as
the Redis engine behaves (our Broker contract; Centrifugo exits instead). A schema that is
newer or foreign is not waited for: one error line, and the part stays down.

The part supplies what differs (`ReaderSpec`: its table, columns and delivery; its schema
setup; its cleanup pass) and keeps its own SQL; this class owns the tasks and connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.engines.postgres.ddl import SchemaError
from app.engines.postgres.errors import DB_ERRORS
from app.engines.postgres.outbox import Outbox
from app.errors import ERROR_INTERNAL, ClientError

log = logging.getLogger("centrifugo.postgres")


@dataclass(frozen=True)
class ReaderSpec:
    """What one part reads: its table (rows in id order per shard, `columns` selected), the
    NOTIFY channel that wakes the reader, and where the rows go."""

    label: str  # in log lines: "stream broker", "controller"
    table: str
    notify_channel: str
    num_shards: int
    columns: str
    deliver: Callable[[Sequence[asyncpg.Record]], None]
    poll_interval: float
    batch_size: int


@dataclass(frozen=True)
class Connection:
    dsn: str
    notify_dsn: str  # the LISTEN connection's (PGBouncer cannot LISTEN); "" = dsn
    connect_kwargs: dict[str, Any]  # asyncpg connect arguments (ssl)
    pool_size: int
    use_notify: bool


class TableReading:
    def __init__(
        self,
        conn: Connection,
        spec: ReaderSpec,
        set_up_schema: Callable[[asyncpg.Connection], Awaitable[None]] | None,
        cleanup: Callable[[], Awaitable[None]],
        cleanup_interval: float,
    ) -> None:
        """`set_up_schema` None: `skip_schema_init`. No I/O until `start`."""
        self._conn = conn
        self._spec = spec
        self._set_up_schema = set_up_schema
        self._cleanup = cleanup
        self._cleanup_interval = cleanup_interval
        self._pool: asyncpg.Pool | None = None
        self.outbox: Outbox | None = None
        self._setup_task: asyncio.Task[None] | None = None
        self._cleanup_task: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ClientError(ERROR_INTERNAL)  # used before start or after close
        return self._pool

    @property
    def healthy(self) -> bool:
        """The last read of the table succeeded."""
        return self.outbox is not None and self.outbox.healthy

    async def start(self) -> None:
        c = self._conn
        # min_size 0: no connection is opened here, and asyncpg does not refill a floor of
        # idle connections by itself (it logs each failure with a traceback while
        # PostgreSQL is away); connections open on demand.
        self._pool = await asyncpg.create_pool(
            c.dsn or None, min_size=0, max_size=c.pool_size, **c.connect_kwargs
        )
        try:
            await self._set_up()
        except SchemaError as e:  # a newer or foreign schema: one line, the part stays down
            log.error("postgres %s: %s", self._spec.label, e)
        except DB_ERRORS as e:
            log.warning("postgres %s: PostgreSQL not ready, retrying: %r", self._spec.label, e)
            self._setup_task = asyncio.get_running_loop().create_task(
                self._set_up_when_ready(), name=f"pg-{self._spec.label}-setup"
            )

    async def _set_up(self) -> None:
        spec, c = self._spec, self._conn
        if self._set_up_schema is not None:
            async with self.pool.acquire() as conn:
                await self._set_up_schema(conn)
        notify = None
        if c.use_notify:

            async def notify() -> asyncpg.Connection:
                return await asyncpg.connect(c.notify_dsn or c.dsn or None, **c.connect_kwargs)

        outbox = Outbox(
            self.pool,
            spec.table,
            spec.notify_channel,
            spec.num_shards,
            spec.deliver,
            poll_interval=spec.poll_interval,
            batch_size=spec.batch_size,
            notify_connect=notify,
            columns=spec.columns,
            label=spec.label,
        )
        await outbox.start()
        self.outbox = outbox  # healthy from here on
        if self._cleanup_interval > 0:
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._cleanup_loop(), name=f"pg-{spec.label}-cleanup"
            )

    async def _set_up_when_ready(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self._set_up()
            except DB_ERRORS:
                delay = min(delay * 2, 5.0)
            except SchemaError as e:  # a newer or foreign schema: nothing to wait for
                log.error("postgres %s: %s", self._spec.label, e)
                return
            else:
                log.info("postgres %s: PostgreSQL ready", self._spec.label)
                return

    async def _cleanup_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._cleanup_interval)
            try:
                await self._cleanup()
            except Exception as e:  # PostgreSQL away: tried at the next tick
                if not failing:
                    log.warning("postgres %s cleanup failed, retrying: %r", self._spec.label, e)
                failing = True
            else:
                failing = False

    async def close(self) -> None:
        """Stop reading and release every connection. Called once, at shutdown."""
        tasks = [t for t in (self._setup_task, self._cleanup_task) if t is not None]
        self._setup_task = self._cleanup_task = None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.outbox is not None:
            await self.outbox.close()
            self.outbox = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
