"""PostgreSQL map broker: keyed channel state, its change stream and the fan-out of every
change through the stream table (Centrifugo 6.8+'s internal/pgmapbroker; the contract is
app/maps/broker.py).

Tables and functions are Centrifugo's (schema.sql), so a Centrifugo node and this server
can share one database. Each write is one call of `<prefix>publish` / `<prefix>remove`,
one transaction: shard lock, meta row (epoch, top offset), checks (idempotency, version,
key mode, CAS), state row, stream row with the next offset, idempotency row, pg_notify.
Readers of the stream table (outbox.py, one per node) deliver each committed row to the
node's handler when the node has subscribers for its channel, so `subscribe` only records
the channel: every row committed after the reader started is seen.

Keys with a TTL are removed by `<prefix>expire_keys` (maintenance.py), which appends
their removals to the stream: they reach subscribers like any removal. Any node may run
it; row locks make one removal per key.

Where this differs from the memory and Redis brokers, it does as Centrifugo's PostgreSQL
broker does: the stream is not trimmed to stream_size or stream_ttl but kept whole until
its daily partition is dropped (partition_retention_days), so catch-up reaches further
back; stored data is JSONB unless `binary_data` (JSON payloads come back normalised by
PostgreSQL: key order and whitespace may change; a non-JSON payload fails with 100);
removals carry the removed entry's tags (MapRemoveOptions.tags is not stored). A read of a
channel without meta creates it (a new epoch), as the contract asks, where Centrifugo
answers an empty position.

Ephemeral channels (no stream in the contract) still get stream rows here (they are the
fan-out), but answer position (0, "") and offsets 0, and deliveries carry epoch "", as the
Redis broker does; deliveries of channels the node's config does not know as map channels carry
the row's offset and epoch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from app.broker import BrokerEventHandler, HealthReporter
from app.engines.postgres.errors import DB_ERRORS
from app.engines.postgres.maintenance import Maintenance
from app.engines.postgres.outbox import Outbox
from app.engines.postgres.payloads import data_in, data_out
from app.engines.postgres.schema import PgNames, ensure_schema
from app.errors import ERROR_INTERNAL, ERROR_UNRECOVERABLE_POSITION, ClientError
from app.maps.broker import (
    SUPPRESS_POSITION_MISMATCH,
    KeyMode,
    MapBroker,
    MapChannelOptions,
    MapCurrentEntry,
    MapPublishOptions,
    MapRemoveOptions,
    MapStateResult,
    MapStreamResult,
    MapUpdateResult,
)
from app.models import ClientInfo, Publication, StreamPosition

log = logging.getLogger("centrifugo.postgres.maps")

OptionsOf = Callable[[str], MapChannelOptions | None]

_STATE_COLUMNS = "key, data, tags, key_offset, client_id, user_id, conn_info, chan_info"
_READ_TX = {"isolation": "repeatable_read", "readonly": True}


def _interval(seconds: float) -> dt.timedelta | None:
    # Centrifugo passes milliseconds, at least one; 0 means none (NULL: never expires).
    if seconds <= 0:
        return None
    return dt.timedelta(milliseconds=max(round(seconds * 1000), 1))


def _db_failure(what: str, e: BaseException) -> ClientError:
    log.error("postgres map broker: %s failed: %r", what, e)
    return ClientError(ERROR_INTERNAL)


def _misuse(channel: str, what: str) -> ClientError:
    # centrifuge returns a plain error here, which Centrifugo's API answers as internal.
    log.warning("map channel %r: %s requires recoverable or persistent mode", channel, what)
    return ClientError(ERROR_INTERNAL)


class PostgresMapBroker:
    """MapBroker over PostgreSQL, with health (`healthy`): see the conformance lines at
    the end of this module."""

    def __init__(
        self,
        dsn: str,
        *,
        options_of: OptionsOf = lambda _channel: None,
        connect_kwargs: dict[str, Any] | None = None,
        notify_dsn: str = "",
        pool_size: int = 16,
        num_shards: int = 8,
        ttl_check_interval: float = 1.0,
        cleanup_interval: float = 60.0,
        idempotent_result_ttl: float = 300.0,
        binary_data: bool = False,
        use_notify: bool = False,
        table_prefix: str = "cf",
        skip_schema_init: bool = False,
        partition_lookahead_days: int = 2,
        partition_retention_days: int = 7,
        poll_interval: float = 0.1,
        batch_size: int = 1000,
    ) -> None:
        """`options_of`: a channel's map options (the node's config), for what a row alone
        does not say: whether a delivered channel is ephemeral, and the meta TTL an expiry
        extends. `connect_kwargs`: asyncpg connect arguments (ssl). No I/O until `run`."""
        self._dsn = dsn
        self._notify_dsn = notify_dsn or dsn
        self._options_of = options_of
        self._connect_kwargs = connect_kwargs or {}
        self._pool_size = pool_size
        self.num_shards = num_shards
        self._result_ttl = idempotent_result_ttl
        self.binary = binary_data
        self._use_notify = use_notify
        self.names = PgNames.of(table_prefix, binary_data)
        self._table_prefix = table_prefix
        self._skip_schema_init = skip_schema_init
        self._lookahead_days = partition_lookahead_days
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._handler: BrokerEventHandler | None = None
        self._subscribed: set[str] = set()
        # channel -> the last stream row id of its shard when it was subscribed: rows up to
        # it were committed before and are not delivered (see subscribe).
        self._since: dict[str, int] = {}
        self._pool: asyncpg.Pool | None = None
        self.outbox: Outbox | None = None
        self.maintenance = Maintenance(
            self,
            ttl_check_interval=ttl_check_interval,
            cleanup_interval=cleanup_interval,
            lookahead_days=partition_lookahead_days,
            retention_days=partition_retention_days,
        )
        n = self.names
        self._publish_sql = (
            "SELECT result_id, channel_offset, epoch, suppressed, suppress_reason, "
            f"current_data, current_offset FROM {n.publish}($1, $2, $3, $4, $5::interval, "
            "$6::interval, $7, $8, $9, $10, $11, $12, $13::interval, $14, $15, $16, $17, $18, "
            "$19, $20)"
        )
        self._remove_sql = (
            "SELECT result_id, channel_offset, epoch, suppressed, suppress_reason, "
            f"current_data, current_offset FROM {n.remove}($1, $2, $3::interval, $4, $5, $6, "
            "$7::interval, $8, $9, $10)"
        )
        self._meta_sql = f"SELECT top_offset, epoch FROM {n.meta} WHERE channel = $1"

    # --- lifecycle ---

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ClientError(ERROR_INTERNAL)  # used before run or after close
        return self._pool

    async def run(self, handler: BrokerEventHandler) -> None:
        """Connects, creates the schema (unless skip_schema_init), starts the stream reader
        and the expiry. Raises when PostgreSQL cannot be reached, as Centrifugo refuses to
        start then."""
        self._handler = handler
        # min_size 0: asyncpg refills a floor of idle connections by itself and logs each
        # failure with a traceback while PostgreSQL is away; connections open on demand.
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=0, max_size=self._pool_size, **self._connect_kwargs
        )
        if not self._skip_schema_init:
            async with self._pool.acquire() as conn:
                await ensure_schema(conn, self._table_prefix, self.num_shards, self._lookahead_days)
        notify = None
        if self._use_notify:

            async def notify() -> asyncpg.Connection:
                return await asyncpg.connect(self._notify_dsn, **self._connect_kwargs)

        self.outbox = Outbox(
            self._pool,
            self.names.stream,
            self.names.notify_channel,
            self.num_shards,
            self._deliver_rows,
            poll_interval=self._poll_interval,
            batch_size=self._batch_size,
            notify_connect=notify,
        )
        await self.outbox.start()
        self.maintenance.start()

    async def close(self) -> None:
        await self.maintenance.close()
        if self.outbox is not None:
            await self.outbox.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._handler = None

    @property
    def healthy(self) -> bool:
        """The last read of the stream table succeeded."""
        return self.outbox is not None and self.outbox.healthy

    def options_of(self, channel: str) -> MapChannelOptions | None:
        return self._options_of(channel)

    # --- node subscriptions: the reader sees every row; deliveries are filtered ---

    async def subscribe(self, channels: list[str]) -> None:
        """Deliver the changes of `channels` committed from now on, as a PUB/SUB
        subscription would: rows already in the stream table (the reader may lag behind
        them) are for stream reads, not deliveries. A streamless sync relies on it: a
        change older than its state page would arrive again as a live update."""
        new = [ch for ch in channels if ch not in self._subscribed]
        if not new:
            return
        if self.outbox is None:
            raise ClientError(ERROR_INTERNAL)  # used before run
        self._since.update(await self.outbox.tops(new))
        self._subscribed.update(new)

    async def unsubscribe(self, channels: list[str]) -> None:
        self._subscribed.difference_update(channels)
        for ch in channels:
            self._since.pop(ch, None)

    def _deliver_rows(self, rows: Sequence[asyncpg.Record]) -> None:
        handler = self._handler
        if handler is None:
            return
        for row in rows:
            channel = row["channel"]
            if channel not in self._subscribed or row["id"] <= self._since.get(channel, 0):
                continue
            pub = self.publication_of(row, "channel_offset")
            pub.time = int(row["created_at"].timestamp() * 1000)
            prev = row["prev_data"]
            if prev is not None:
                # Only a delta write of an existing key stores it (Centrifugo's useDelta).
                pub.delta = True
                pub.prev_data = self._data_out(prev)
            epoch = row["epoch"]
            chopts = self._options_of(channel)
            if chopts is not None and not chopts.mode.has_stream:
                pub.offset, epoch = 0, ""
            try:
                handler.handle_publication(channel, pub, epoch)
            except Exception:
                log.exception("map publication handler failed for channel %r", channel)

    # --- encoding ---

    def _data_in(self, data: bytes | None) -> bytes | str | None:
        return data_in(data, self.binary, "map broker")

    def _data_out(self, value: bytes | str | None) -> bytes:
        return data_out(value)

    def publication_of(self, row: asyncpg.Record, offset_column: str) -> Publication:
        """A state or stream row as a publication (key, data, tags, info, offset)."""
        info = None
        if row["client_id"] is not None:
            info = ClientInfo(
                user=row["user_id"] or "",
                client=row["client_id"],
                conn_info=self._data_out(row["conn_info"]) or None,
                chan_info=self._data_out(row["chan_info"]) or None,
            )
        tags = row["tags"]
        removed = bool(row["removed"]) if offset_column == "channel_offset" else False
        return Publication(
            self._data_out(row["data"]),
            info,
            row[offset_column],
            json.loads(tags) or None if tags is not None else None,
            key=row["key"],
            removed=removed,
        )

    # --- writes ---

    async def publish(
        self, channel: str, key: str, opts: MapPublishOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        has_stream = chopts.mode.has_stream
        if not has_stream:
            if opts.expected_position is not None:
                raise _misuse(channel, "CAS (expected_position)")
            if opts.version > 0:
                raise _misuse(channel, "version-based dedup")
        info = opts.client_info
        expected = opts.expected_position
        versioned = opts.version > 0 and key != ""
        args = (
            channel,
            key,
            self._data_in(opts.data),
            json.dumps(opts.tags) if opts.tags is not None else None,
            _interval(chopts.key_ttl),
            _interval(chopts.meta_ttl),
            None if opts.key_mode is KeyMode.REPLACE else opts.key_mode.value,
            expected.offset if expected is not None else None,
            expected.epoch if expected is not None and expected.epoch else None,
            opts.version if versioned else None,
            opts.version_epoch if versioned and opts.version_epoch else None,
            opts.idempotency_key or None,
            _interval(opts.idempotent_result_ttl or self._result_ttl)
            if opts.idempotency_key
            else None,
            opts.delta,
            info.client or None if info is not None else None,
            info.user or None if info is not None else None,
            self._data_in(info.conn_info) if info is not None else None,
            self._data_in(info.chan_info) if info is not None else None,
            opts.refresh_ttl_on_suppress,
            self.num_shards,
        )
        try:
            row = await self.pool.fetchrow(self._publish_sql, *args)
        except DB_ERRORS as e:
            raise _db_failure(f"publish to {channel!r}", e) from None
        return self._update_result(row, has_stream)

    async def remove(
        self, channel: str, key: str, opts: MapRemoveOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        has_stream = chopts.mode.has_stream
        if not has_stream and opts.expected_position is not None:
            raise _misuse(channel, "CAS (expected_position)")
        expected = opts.expected_position
        args = (
            channel,
            key,
            _interval(chopts.meta_ttl),
            expected.offset if expected is not None else None,
            expected.epoch if expected is not None and expected.epoch else None,
            opts.idempotency_key or None,
            _interval(opts.idempotent_result_ttl or self._result_ttl)
            if opts.idempotency_key
            else None,
            None,
            None,
            self.num_shards,
        )
        try:
            row = await self.pool.fetchrow(self._remove_sql, *args)
        except DB_ERRORS as e:
            raise _db_failure(f"remove from {channel!r}", e) from None
        return self._update_result(row, has_stream)

    def _update_result(self, row: asyncpg.Record, has_stream: bool) -> MapUpdateResult:
        # Ephemeral channels answer no position, as the Redis broker does.
        position = (
            StreamPosition(row["channel_offset"], row["epoch"]) if has_stream else StreamPosition()
        )
        if not row["suppressed"]:
            return MapUpdateResult(position)
        reason = row["suppress_reason"] or ""
        result = MapUpdateResult(position, True, reason)
        if reason == SUPPRESS_POSITION_MISMATCH and row["current_offset"] is not None:
            result.current_entry = MapCurrentEntry(
                row["current_offset"], self._data_out(row["current_data"])
            )
        return result

    # --- reads ---

    async def _ensure_meta(
        self, conn: asyncpg.Connection, channel: str, chopts: MapChannelOptions
    ) -> None:
        """A channel read before any write gets its meta (a new epoch), so a reader always
        has a position; state rows of a dead epoch go with it, as publish does."""
        meta_ttl = _interval(chopts.meta_ttl)
        n = self.names
        async with conn.transaction():
            made = await conn.fetchval(
                f"INSERT INTO {n.meta} (channel, top_offset, epoch, updated_at, expires_at) "
                "VALUES ($1, 0, substr(md5(random()::text || random()::text), 1, 8), NOW(), "
                "NOW() + $2::interval) ON CONFLICT (channel) DO NOTHING RETURNING true",
                channel,
                meta_ttl,
            )
            if made:
                await conn.execute(f"DELETE FROM {n.state} WHERE channel = $1", channel)

    async def _meta(self, conn: asyncpg.Connection, channel: str) -> StreamPosition:
        """The channel's position; LookupError when it has no meta row."""
        row = await conn.fetchrow(self._meta_sql, channel)
        if row is None:
            raise LookupError(channel)
        return StreamPosition(row["top_offset"], row["epoch"])

    async def read_state(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        cursor: str = "",
        limit: int = -1,
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapStateResult:
        n = self.names
        has_stream = chopts.mode.has_stream
        if key:
            sql = f"SELECT {_STATE_COLUMNS} FROM {n.state} WHERE channel = $1 AND key = $2"
            args: tuple[Any, ...] = (channel, key)
        else:
            sql = (
                f"SELECT {_STATE_COLUMNS} FROM {n.state} WHERE channel = $1 AND key > $2 "
                "ORDER BY key" + (" LIMIT $3" if limit > 0 else "")
            )
            # One more than asked: whether another page follows.
            args = (channel, cursor) + ((limit + 1,) if limit > 0 else ())
        try:
            async with self.pool.acquire() as conn:
                for _ in range(2):
                    try:
                        async with conn.transaction(**_READ_TX):
                            position = await self._meta(conn, channel)
                            if not has_stream:  # no stream, no position (as Redis answers)
                                position = StreamPosition()
                            if revision is not None and revision.epoch != position.epoch:
                                raise ClientError(ERROR_UNRECOVERABLE_POSITION)
                            rows = [] if limit == 0 and not key else await conn.fetch(sql, *args)
                        break
                    except LookupError:
                        if revision is not None and revision.epoch:
                            raise ClientError(ERROR_UNRECOVERABLE_POSITION) from None
                        await self._ensure_meta(conn, channel, chopts)
                        revision = None  # a new channel matches a revision without epoch
                else:
                    raise ClientError(ERROR_INTERNAL)  # meta deleted twice in a row
        except DB_ERRORS as e:
            raise _db_failure(f"read state of {channel!r}", e) from None
        pubs = [self.publication_of(r, "key_offset") for r in rows]
        if not has_stream:
            for p in pubs:
                p.offset = 0
        next_cursor = ""
        if not key and limit > 0 and len(pubs) > limit:
            del pubs[limit:]
            next_cursor = pubs[-1].key
        return MapStateResult(pubs, position, next_cursor)

    async def read_stream(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        since: StreamPosition | None = None,
        limit: int = -1,
        reverse: bool = False,
    ) -> MapStreamResult:
        n = self.names
        lim = " LIMIT $4" if limit > 0 else ""
        if reverse:
            sql = (
                f"SELECT key, data, tags, channel_offset, removed, client_id, user_id, "
                f"conn_info, chan_info FROM {n.stream} WHERE channel = $1 AND epoch = $2 "
                f"AND channel_offset < $3 ORDER BY channel_offset DESC{lim}"
            )
        else:
            sql = (
                f"SELECT key, data, tags, channel_offset, removed, client_id, user_id, "
                f"conn_info, chan_info FROM {n.stream} WHERE channel = $1 AND epoch = $2 "
                f"AND channel_offset > $3 ORDER BY channel_offset{lim}"
            )
        first_sql = f"SELECT min(channel_offset) FROM {n.stream} WHERE channel = $1 AND epoch = $2"
        try:
            async with self.pool.acquire() as conn:
                for _ in range(2):
                    try:
                        async with conn.transaction(**_READ_TX):
                            position = await self._meta(conn, channel)
                            if since is not None and since.epoch and since.epoch != position.epoch:
                                raise ClientError(ERROR_UNRECOVERABLE_POSITION)
                            top = position.offset
                            if since is not None and not reverse and since.offset < top:
                                # The reader's next offset must still be kept, or it cannot
                                # catch up (the contract's check; Centrifugo's node does it).
                                first = await conn.fetchval(first_sql, channel, position.epoch)
                                if first is None or first > since.offset + 1:
                                    raise ClientError(ERROR_UNRECOVERABLE_POSITION)
                            rows: list[asyncpg.Record] = []
                            if limit != 0 and chopts.mode.has_stream:
                                if reverse:
                                    bound = top + 1 if since is None else since.offset
                                else:
                                    bound = 0 if since is None else since.offset
                                extra = (limit,) if limit > 0 else ()
                                rows = await conn.fetch(sql, channel, position.epoch, bound, *extra)
                        break
                    except LookupError:
                        await self._ensure_meta(conn, channel, chopts)
                else:
                    raise ClientError(ERROR_INTERNAL)  # meta deleted twice in a row
        except DB_ERRORS as e:
            raise _db_failure(f"read stream of {channel!r}", e) from None
        pubs = [self.publication_of(r, "channel_offset") for r in rows]
        if not chopts.mode.has_stream:
            position = StreamPosition()
        return MapStreamResult(pubs, position)

    async def stats(self, channel: str) -> int:
        try:
            count = await self.pool.fetchval(
                f"SELECT count(*) FROM {self.names.state} WHERE channel = $1", channel
            )
        except DB_ERRORS as e:
            raise _db_failure(f"stats of {channel!r}", e) from None
        return int(count)

    async def clear(self, channel: str) -> None:
        n = self.names
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                for table in (n.stream, n.state, n.meta, n.idempotency):
                    await conn.execute(f"DELETE FROM {table} WHERE channel = $1", channel)
        except DB_ERRORS as e:
            raise _db_failure(f"clear of {channel!r}", e) from None


# Conformance, checked by mypy (Centrifugo's `var _ centrifuge.MapBroker = (*PostgresMapBroker)(nil)`).
_map_broker: type[MapBroker] = PostgresMapBroker
_health: type[HealthReporter] = PostgresMapBroker
