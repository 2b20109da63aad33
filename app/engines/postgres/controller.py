"""PostgreSQL controller: node-to-node control messages (app/broker.py's Controller) through a
PostgreSQL table (Centrifugo 6.8+'s `controller.type: postgres`,
internal/controllers/controller_postgres.go), for brokers that carry no control of their
own (the PostgreSQL stream broker) or in place of the broker's (Centrifugo's rule:
an enabled `controller` section wins, app/engines/build.py).

Tables and the function are Centrifugo's (controller_schema.sql), so a Centrifugo node and
this server can share one database: a message is one call of `<prefix>_controller_publish`
(shard lock, row, pg_notify) in one transaction, with `node_id` '' for every node or the one
node it is for.

Delivery, as Centrifugo's: every node reads the messages table itself (outbox.py: one
cursor per shard, all shards in one query, woken by NOTIFY when `use_notify`, else every
`poll_interval`), hands on the rows for every node and those for its own id, and skips
the rest. Cursors start at the table's MAX(id) when reading starts, so rows written before
a node started are not delivered (control is live only, as over Redis PUB/SUB). Rows stay
until their daily partition is dropped: every `partition_cleanup_interval` each node makes
the lookahead partitions and drops those older than `partition_retention_days`.

A node whose PostgreSQL is away at start keeps trying in the background (Centrifugo exits
instead), as the stream broker does; a publish meanwhile fails with error 100 and one log
line (heartbeats retry by themselves, app/membership.py). After an outage the reader goes on
from its cursors: what was written meanwhile is delivered then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.broker import ControlEventHandler, Controller
from app.engines.postgres.ddl import (
    drop_old_partitions,
    ensure_partitions,
    ensure_variants,
    render_template,
)
from app.engines.postgres.errors import DB_ERRORS
from app.engines.postgres.outbox import Outbox
from app.engines.postgres.reading import Connection, ReaderSpec, TableReading
from app.errors import ERROR_INTERNAL, ClientError

log = logging.getLogger("centrifugo.postgres.controller")

COLUMNS = "id, shard_id, node_id, data"
# Not the brokers' keys: their schemas and this one may be created at the same time.
_SCHEMA_LOCK_KEY = 5_067_067_001


@dataclass(frozen=True, slots=True)
class ControllerNames:
    """Centrifugo's controllerNames: `<table_prefix>_controller_*`."""

    prefix: str

    @classmethod
    def of(cls, table_prefix: str) -> ControllerNames:
        return cls((table_prefix.rstrip("_") or "cf") + "_")

    @property
    def stream(self) -> str:
        """The messages table (what ddl.py partitions and outbox.py reads)."""
        return self.prefix + "controller_messages"

    @property
    def shard_lock(self) -> str:
        return self.prefix + "controller_shard_lock"

    @property
    def schema_version(self) -> str:
        return self.prefix + "controller_schema_version"

    @property
    def publish(self) -> str:
        return self.prefix + "controller_publish"

    @property
    def notify_channel(self) -> str:
        return self.prefix + "controller_notify"

    def render(self) -> tuple[str, str]:
        """(tables, functions) of the schema."""
        return render_template(
            __package__ or "app.engines.postgres",
            "controller_schema.sql",
            {"__PREFIX__": self.prefix},
        )


class PostgresController:
    """Controller over PostgreSQL: see the conformance line at the end of this module."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_kwargs: dict[str, Any] | None = None,
        notify_dsn: str = "",
        pool_size: int = 8,
        num_shards: int = 1,
        table_prefix: str = "cf",
        poll_interval: float = 0.05,
        use_notify: bool = False,
        partition_retention_days: int = 1,
        partition_lookahead_days: int = 2,
        partition_cleanup_interval: float = 60.0,
        batch_size: int = 1000,
        skip_schema_init: bool = False,
    ) -> None:
        """Centrifugo's PostgresControllerConfig (its defaults). `connect_kwargs`: asyncpg
        connect arguments (ssl). No I/O until `run_control`."""
        self.num_shards = num_shards
        self._retention_days = partition_retention_days
        self._lookahead_days = partition_lookahead_days
        self.cleanup_interval = partition_cleanup_interval
        self.names = ControllerNames.of(table_prefix)
        self._publish_sql = f"SELECT {self.names.publish}($1, $2, $3)"
        self._handler: ControlEventHandler | None = None
        self._node_id = ""
        self._reading = TableReading(
            Connection(dsn, notify_dsn, connect_kwargs or {}, pool_size, use_notify),
            ReaderSpec(
                "controller",
                self.names.stream,
                self.names.notify_channel,
                num_shards,
                COLUMNS,
                self._deliver_rows,
                poll_interval,
                batch_size,
            ),
            None if skip_schema_init else self._ensure_schema,
            self.cleanup,
            partition_cleanup_interval,
        )

    # --- lifecycle (app/engines/postgres/reading.py) ---

    @property
    def pool(self) -> asyncpg.Pool:
        return self._reading.pool

    @property
    def outbox(self) -> Outbox | None:
        return self._reading.outbox

    async def run_control(self, handler: ControlEventHandler) -> None:
        """Creates the pool and sets up: the schema (unless skip_schema_init), the reader
        (cursors at the table's end before this returns, so every message published after
        it reaches `handler`), the partition upkeep. When PostgreSQL is away it returns all
        the same and keeps trying in the background (reading.py)."""
        self._handler = handler
        self._node_id = handler.id
        await self._reading.start()
        log.info("postgres controller running")

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        await ensure_variants(
            conn,
            [self.names],
            num_shards=self.num_shards,
            lookahead_days=self._lookahead_days,
            lock_key=_SCHEMA_LOCK_KEY,
        )

    async def close(self) -> None:
        """Stop reading and release every connection. Called once, at shutdown."""
        await self._reading.close()
        self._handler = None

    # --- sending and delivering ---

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        try:
            await self.pool.execute(self._publish_sql, data, node_id, self.num_shards)
        except DB_ERRORS as e:
            log.warning("postgres controller: publish failed: %r", e)
            raise ClientError(ERROR_INTERNAL) from None

    def _deliver_rows(self, rows: Sequence[asyncpg.Record]) -> None:
        handler = self._handler
        if handler is None:
            return
        me = self._node_id
        for row in rows:
            target = row["node_id"]
            if target and target != me:
                continue  # for another node
            try:
                handler.handle_control(row["data"])
            except Exception:
                log.exception("control message handler failed")

    # --- partitions ---

    async def cleanup(self) -> None:
        """One pass of Centrifugo's partitioner: the lookahead partitions made, those older
        than `partition_retention_days` dropped."""
        async with self.pool.acquire() as conn:
            await ensure_partitions(conn, self.names.stream, self._lookahead_days)
            await drop_old_partitions(conn, self.names.stream, self._retention_days)


# Conformance, checked by mypy (Centrifugo's `var _ centrifuge.Controller = (*PostgresController)(nil)`).
_controller: type[Controller] = PostgresController
