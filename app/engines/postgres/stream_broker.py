"""PostgreSQL stream broker: the node's Broker (app/broker.py) with history, offsets, epochs,
idempotency and versions in PostgreSQL tables and the fan-out read from the same table
(Centrifugo 6.8+'s internal/pgstreambroker, `broker.type: postgres`).

Tables and functions are Centrifugo's (stream_schema.sql), so a Centrifugo node and this
server can share one database, and an application can publish from its own transaction
by calling `<prefix>publish` (no dual write). Each publication is one call of that
function, one transaction: shard lock, meta row (epoch, top offset, history window,
version), idempotency and version checks, the stream row with the next offset, the
idempotency row, pg_notify. Joins and leaves are rows too (`<prefix>publish_join/leave`).

Delivery, as Centrifugo's without an inner broker: every node reads the stream table
itself (outbox.py: one cursor per shard, all shards in one query, woken by NOTIFY when
`use_notify`, else every `outbox.poll_interval`), so every node sees every row once and in
id order per shard, hence in offset order per channel. `subscribe` takes the channel's
shard's last row id (rows up to it are for history reads, as PUB/SUB would not deliver
them) and the reader hands the node the rows of subscribed channels only. Rows committed
before a node started are not delivered (Centrifugo's at-most-once live delivery): a
client catches up from history by offset and epoch.

Where this differs from the memory and Redis brokers, it does as Centrifugo's broker
does: the history window (history_size, history_ttl) is the last publication's, applied
when reading; rows stay until their daily partition is dropped (partition_retention_days);
a read of a channel without meta answers position (0, "") and creates nothing (the client
takes the epoch of the first publication it gets); a publication without history is still
a row with the next offset (it is the fan-out), delivered with that offset and epoch, but
answers a zero position; stored data is
JSONB unless `binary_data` (JSON comes back in PostgreSQL's normal form: key order and
whitespace may change; a payload that is not JSON fails with 100).

Expired meta rows (the next publication starts a new epoch) and idempotency results are
deleted and partitions kept every `cleanup_interval` by every node (ddl.py). A node whose
PostgreSQL is away at start boots unhealthy and sets up once it answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from app.broker import BatchPublisher, Broker, BrokerEventHandler, HealthReporter
from app.engines.postgres.ddl import (
    delete_expired,
    drop_old_partitions,
    ensure_partitions,
)
from app.engines.postgres.errors import DB_ERRORS
from app.engines.postgres.outbox import Outbox
from app.engines.postgres.payloads import data_in, data_out
from app.engines.postgres.reading import Connection, ReaderSpec, TableReading
from app.engines.postgres.stream_schema import StreamNames, ensure_stream_schema
from app.errors import ERROR_INTERNAL, ClientError
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)

log = logging.getLogger("centrifugo.postgres.stream")

# What a delivered row carries (the reader needs id and shard_id).
COLUMNS = (
    "id, shard_id, channel, channel_offset, epoch, kind, data, tags, client_id, user_id, "
    "conn_info, chan_info, prev_data, created_at"
)
KIND_PUBLICATION, KIND_JOIN, KIND_LEAVE = 0, 1, 2
_INT32_MAX = 2**31 - 1


def _interval(seconds: float) -> dt.timedelta:
    # Centrifugo passes whole milliseconds, at least one.
    return dt.timedelta(milliseconds=max(round(seconds * 1000), 1))


def _db_failure(what: str, e: BaseException) -> ClientError:
    log.error("postgres stream broker: %s failed: %r", what, e)
    return ClientError(ERROR_INTERNAL)


class PostgresStreamBroker:
    """Broker over PostgreSQL, with health (`healthy`) and batched publishing: see the
    conformance lines at the end of this module. Not a Controller: as in Centrifugo,
    node-to-node control stays within the node unless a `controller` section names one
    (the PostgreSQL controller, app/engines/postgres/controller.py; app/engines/build.py)."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_kwargs: dict[str, Any] | None = None,
        notify_dsn: str = "",
        pool_size: int = 16,
        num_shards: int = 8,
        cleanup_interval: float = 60.0,
        idempotent_result_ttl: float = 300.0,
        binary_data: bool = False,
        stream_retention: float = 86400.0,
        use_notify: bool = False,
        table_prefix: str = "cf",
        skip_schema_init: bool = False,
        partition_lookahead_days: int = 2,
        partition_retention_days: int = 7,
        poll_interval: float = 0.1,
        batch_size: int = 1000,
    ) -> None:
        """`connect_kwargs`: asyncpg connect arguments (ssl). `stream_retention`: the meta
        TTL of a publication that sets none. No I/O until `run`."""
        self.num_shards = num_shards
        self.cleanup_interval = cleanup_interval
        self._result_ttl = idempotent_result_ttl
        self.binary = binary_data
        self._stream_retention = stream_retention
        self._table_prefix = table_prefix
        self._lookahead_days = partition_lookahead_days
        self._retention_days = partition_retention_days
        self.names = n = StreamNames.of(table_prefix, binary_data)
        self._handler: BrokerEventHandler | None = None
        self._use_notify = use_notify
        self._reading = TableReading(
            Connection(dsn, notify_dsn, connect_kwargs or {}, pool_size, use_notify),
            ReaderSpec(
                "stream broker",
                n.stream,
                n.notify_channel,
                num_shards,
                COLUMNS,
                self._deliver_rows,
                poll_interval,
                batch_size,
            ),
            None if skip_schema_init else self._ensure_schema,
            self.cleanup,
            cleanup_interval,
        )
        # channel -> the last row id of its shard when the node subscribed (see subscribe).
        self._since: dict[str, int] = {}
        self._publish_sql = (
            "SELECT out_result_id, out_channel_offset, out_epoch, out_suppressed, "
            f"out_suppress_reason FROM {n.publish}($1, $2, $3, $4::interval, $5, "
            "$6::interval, $7, $8, $9, $10::interval, $11, $12, $13, $14, $15, $16)"
        )
        self._join_sql = f"SELECT {n.publish_join}($1, $2, $3, $4, $5, $6)"
        self._leave_sql = f"SELECT {n.publish_leave}($1, $2, $3, $4, $5, $6)"
        self._meta_sql = (
            f"SELECT top_offset, epoch, history_ttl, history_size FROM {n.meta} WHERE channel = $1"
        )
        self._rows_sql = (
            "SELECT channel_offset, data, tags, client_id, user_id, conn_info, chan_info, "
            f"created_at FROM {n.stream} WHERE channel = $1 AND kind = 0 "
            "AND channel_offset >= $2 AND channel_offset <= $3 AND epoch = $4 "
            "AND ($5::interval IS NULL OR created_at > NOW() - $5::interval) "
            "ORDER BY channel_offset {order} LIMIT $6"
        )

    # --- lifecycle (app/engines/postgres/reading.py) ---

    @property
    def pool(self) -> asyncpg.Pool:
        return self._reading.pool

    @property
    def outbox(self) -> Outbox | None:
        return self._reading.outbox

    async def run(self, handler: BrokerEventHandler) -> None:
        """Creates the pool and sets up: the schema (unless skip_schema_init), the stream
        reader, the cleanup. When PostgreSQL is away it returns all the same and keeps
        trying in the background, unhealthy meanwhile (reading.py)."""
        self._handler = handler
        await self._reading.start()

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        await ensure_stream_schema(conn, self._table_prefix, self.num_shards, self._lookahead_days)

    async def close(self) -> None:
        await self._reading.close()
        self._handler = None

    @property
    def healthy(self) -> bool:
        """The last read of the stream table succeeded."""
        return self._reading.healthy

    async def cleanup(self) -> None:
        """One cleanup pass: expired meta and idempotency rows, partitions made ahead and
        old ones dropped (Centrifugo's cleanup and partition workers)."""
        n = self.names
        await delete_expired(self.pool, n.meta, n.idempotency)
        async with self.pool.acquire() as conn:
            await ensure_partitions(conn, n.stream, self._lookahead_days)
            await drop_old_partitions(conn, n.stream, self._retention_days)

    # --- node subscriptions: the reader sees every row; deliveries are filtered ---

    async def subscribe(self, channels: list[str]) -> None:
        """Deliver what `channels` get from now on: rows already committed (the reader may
        lag behind them) are for history reads, not deliveries."""
        new = [ch for ch in channels if ch not in self._since]
        if not new:
            return
        if self.outbox is None:
            raise ClientError(ERROR_INTERNAL)  # used before run
        try:
            tops = await self.outbox.tops(new)
        except DB_ERRORS as e:
            raise _db_failure(f"subscribe to {len(new)} channel(s)", e) from None
        self._since.update(tops)

    async def unsubscribe(self, channels: list[str]) -> None:
        for ch in channels:
            self._since.pop(ch, None)

    def _deliver_rows(self, rows: Sequence[asyncpg.Record]) -> None:
        handler = self._handler
        if handler is None:
            return
        since = self._since
        for row in rows:
            channel = row["channel"]
            top = since.get(channel)
            if top is None or row["id"] <= top:
                continue
            try:
                kind = row["kind"]
                if kind == KIND_PUBLICATION:
                    prev = row["prev_data"]
                    pub = Publication(
                        self._data_out(row["data"]),
                        self._info_of(row),
                        row["channel_offset"],
                        json.loads(row["tags"]) or None if row["tags"] is not None else None,
                        time=int(row["created_at"].timestamp() * 1000),
                        # The publisher allowed delta and the epoch had a previous one.
                        delta=prev is not None,
                    )
                    handler.handle_publication(channel, pub, row["epoch"])
                elif (info := self._info_of(row)) is not None:
                    if kind == KIND_JOIN:
                        handler.handle_join(channel, info)
                    elif kind == KIND_LEAVE:
                        handler.handle_leave(channel, info)
            except Exception:
                log.exception("stream row handler failed for channel %r", channel)

    # --- encoding ---

    def _data_in(self, data: bytes | None) -> bytes | str | None:
        return data_in(data, self.binary, "stream broker")

    def _data_out(self, value: bytes | str | None) -> bytes:
        return data_out(value)

    def _info_of(self, row: asyncpg.Record) -> ClientInfo | None:
        if row["client_id"] is None:
            return None
        return ClientInfo(
            user=row["user_id"] or "",
            client=row["client_id"],
            conn_info=self._data_out(row["conn_info"]) or None,
            chan_info=self._data_out(row["chan_info"]) or None,
        )

    def _info_args(self, info: ClientInfo | None) -> tuple[Any, Any, Any, Any]:
        # Centrifugo stores an empty id as NULL (a delivery then carries no info).
        if info is None:
            return None, None, None, None
        return (
            info.client or None,
            info.user or None,
            self._data_in(info.conn_info),
            self._data_in(info.chan_info),
        )

    # --- writes ---

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        history = opts.history_size > 0 and opts.history_ttl > 0
        versioned = history and opts.version > 0  # the contract: no versions without history
        key = opts.idempotency_key or None
        args = (
            channel,
            self._data_in(data),
            json.dumps(opts.tags) if opts.tags else None,
            _interval(opts.history_ttl) if opts.history_ttl > 0 else None,
            opts.history_size if opts.history_size > 0 else None,
            _interval(opts.history_meta_ttl or self._stream_retention),
            opts.version if versioned else None,
            opts.version_epoch if versioned and opts.version_epoch else None,
            key,
            _interval(opts.idempotent_result_ttl or self._result_ttl) if key else None,
            opts.delta,
            *self._info_args(opts.client_info),
            self.num_shards,
        )
        try:
            row = await self.pool.fetchrow(self._publish_sql, *args)
        except DB_ERRORS as e:
            raise _db_failure(f"publish to {channel!r}", e) from None
        assert row is not None  # the function always answers one row
        position = StreamPosition(row["out_channel_offset"], row["out_epoch"])
        if not history:
            # Stored and delivered all the same; the caller asked for no position.
            position = StreamPosition()
        if row["out_suppressed"]:
            return PublishResult(position, True, row["out_suppress_reason"] or "")
        if self.outbox is not None and not self._use_notify:
            self.outbox.wake()  # without LISTEN, this node at least delivers at once
        return PublishResult(position)

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, PublishOptions]]
    ) -> list[PublishResult | ClientError]:
        """Each channel's items one after another, in item order (two calls in flight at
        once on two connections could take the shard lock in either order); the channels
        side by side, as many at a time as the pool has connections."""
        out: list[PublishResult | ClientError] = [ClientError(ERROR_INTERNAL)] * len(items)
        by_channel: dict[str, list[int]] = {}
        for i, (channel, _, _) in enumerate(items):
            by_channel.setdefault(channel, []).append(i)

        async def in_order(indexes: list[int]) -> None:
            for i in indexes:
                try:
                    out[i] = await self.publish(*items[i])
                except ClientError as e:
                    out[i] = e

        await asyncio.gather(*(in_order(ix) for ix in by_channel.values()))
        return out

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._join_leave(self._join_sql, channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._join_leave(self._leave_sql, channel, info)

    async def _join_leave(self, sql: str, channel: str, info: ClientInfo) -> None:
        try:
            await self.pool.fetchval(
                sql,
                channel,
                info.client,
                info.user,
                self._data_in(info.conn_info),
                self._data_in(info.chan_info),
                self.num_shards,
            )
        except DB_ERRORS as e:
            raise _db_failure(f"join/leave of {channel!r}", e) from None

    async def remove_history(self, channel: str) -> None:
        try:
            await self.pool.execute(
                f"SELECT {self.names.remove_history}($1, $2)", channel, self.num_shards
            )
        except DB_ERRORS as e:
            raise _db_failure(f"remove_history of {channel!r}", e) from None

    # --- reads ---

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        """Centrifugo's read: the meta row, then the publications of its epoch inside the
        window it holds (the last `history_size` offsets, younger than `history_ttl`)."""
        try:
            async with self.pool.acquire() as conn:
                meta = await conn.fetchrow(self._meta_sql, channel)
                if meta is None:
                    return HistoryResult([], StreamPosition())
                top, epoch = meta["top_offset"], meta["epoch"]
                position = StreamPosition(top, epoch)
                if flt.limit == 0:
                    return HistoryResult([], position)
                size: int = meta["history_size"]
                ttl: dt.timedelta = meta["history_ttl"]
                window_start = top - size + 1 if size > 0 and top >= size else 1
                since = flt.since.offset if flt.since is not None else 0
                start, end = window_start, top
                if flt.reverse:
                    if since > 0:
                        end = since - 1
                else:
                    start = max(since + 1, window_start)
                limit = flt.limit if 0 < flt.limit < _INT32_MAX else _INT32_MAX
                if size > 0:
                    limit = min(limit, size)
                order = "DESC" if flt.reverse else "ASC"
                rows = await conn.fetch(
                    self._rows_sql.format(order=order),
                    channel,
                    start,
                    end,
                    epoch,
                    ttl if ttl > dt.timedelta(0) else None,
                    limit,
                )
        except DB_ERRORS as e:
            raise _db_failure(f"history of {channel!r}", e) from None
        pubs = [
            Publication(
                self._data_out(r["data"]),
                self._info_of(r),
                r["channel_offset"],
                json.loads(r["tags"]) or None if r["tags"] is not None else None,
                time=int(r["created_at"].timestamp() * 1000),
            )
            for r in rows
        ]
        return HistoryResult(pubs, position)


# Conformance, checked by mypy (Centrifugo's `var _ centrifuge.Broker = (*PostgresStreamBroker)(nil)`).
_broker: type[Broker] = PostgresStreamBroker
_health: type[HealthReporter] = PostgresStreamBroker
_batch: type[BatchPublisher] = PostgresStreamBroker
