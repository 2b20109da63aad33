"""The PostgreSQL map broker's schema: names, creation and the stream's daily partitions
(Centrifugo's pgmapbroker EnsureSchema and pgoutbox.Partitioner).

`schema.sql` beside this module is the template (tables, indexes, the write functions);
`ensure_schema` renders it for both variants (JSONB data and BYTEA data, whatever
`binary_data` says, as Centrifugo does), fills the shard lock table with one row per shard
and makes today's and the next `lookahead_days` partitions. It is idempotent and runs
under a transaction-level advisory lock, so the workers of one server (and several
servers) starting at once do not race on CREATE. The version table is Centrifugo's
(schema version 1, no migrations yet); a database at a newer version is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

# Centrifugo's schemaVersion; its migrations start at 2.
SCHEMA_VERSION = 1
# Any constant unlikely to be another program's advisory lock key.
_SCHEMA_LOCK_KEY = 4_067_066_999
_FUNCTIONS_MARKER = "-- @@functions@@"
_PARTITION_DATE = re.compile(r"_(\d{4})_(\d{2})_(\d{2})$")


@dataclass(frozen=True, slots=True)
class PgNames:
    """Table, function and NOTIFY channel names of one variant (Centrifugo's pgNames):
    `<table_prefix>_map_*` for JSONB data, `<table_prefix>_binary_map_*` for BYTEA."""

    prefix: str
    binary: bool

    @classmethod
    def of(cls, table_prefix: str, binary: bool) -> PgNames:
        base = table_prefix.rstrip("_") or "cf"
        return cls(f"{base}_binary_map_" if binary else f"{base}_map_", binary)

    @property
    def stream(self) -> str:
        return self.prefix + "stream"

    @property
    def state(self) -> str:
        return self.prefix + "state"

    @property
    def meta(self) -> str:
        return self.prefix + "meta"

    @property
    def idempotency(self) -> str:
        return self.prefix + "idempotency"

    @property
    def shard_lock(self) -> str:
        return self.prefix + "shard_lock"

    @property
    def schema_version(self) -> str:
        return self.prefix + "schema_version"

    @property
    def publish(self) -> str:
        return self.prefix + "publish"

    @property
    def remove(self) -> str:
        return self.prefix + "remove"

    @property
    def expire_keys(self) -> str:
        return self.prefix + "expire_keys"

    @property
    def notify_channel(self) -> str:
        return self.prefix + "stream_notify"


def render(names: PgNames) -> tuple[str, str]:
    """The template for one variant, split into (tables, functions): run apart, so a
    CREATE OR REPLACE FUNCTION does not wait behind DDL of the same transaction."""
    template = resources.files(__package__).joinpath("schema.sql").read_text()
    sql = template.replace("__PREFIX__", names.prefix).replace(
        "__DATA_TYPE__", "BYTEA" if names.binary else "JSONB"
    )
    tables, _, functions = sql.partition(_FUNCTIONS_MARKER)
    return tables, functions


class SchemaError(Exception):
    """The database's schema cannot serve this server (newer version, not partitioned)."""


async def ensure_schema(
    conn: asyncpg.Connection, table_prefix: str, num_shards: int, lookahead_days: int
) -> None:
    """Create (or complete) both variants' tables and functions, fit the shard lock
    tables to `num_shards`, make the lookahead partitions. Idempotent."""
    variants = [PgNames.of(table_prefix, False), PgNames.of(table_prefix, True)]
    async with conn.transaction():
        # Held to commit: the next worker waits, then finds everything made.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
        for names in variants:
            tables, functions = render(names)
            await conn.execute(tables)
            current = await conn.fetchval(
                f"SELECT schema_version FROM {names.schema_version} WHERE id = 1"
            )
            if current is not None and current > SCHEMA_VERSION:
                raise SchemaError(
                    f"{names.schema_version} is at version {current}, newer than this "
                    f"server's {SCHEMA_VERSION}"
                )
            partitioned = await conn.fetchval(
                "SELECT EXISTS(SELECT 1 FROM pg_partitioned_table WHERE partrelid = $1::regclass)",
                names.stream,
            )
            if not partitioned:
                raise SchemaError(f"{names.stream} exists but is not partitioned")
            await conn.execute(functions)
            # Every row must exist: a missing shard row would let a write go unserialized.
            await conn.execute(
                f"INSERT INTO {names.shard_lock} (shard_id) "
                "SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                num_shards,
            )
            await conn.execute(f"DELETE FROM {names.shard_lock} WHERE shard_id >= $1", num_shards)
            await ensure_partitions(conn, names.stream, lookahead_days)


async def ensure_partitions(conn: asyncpg.Connection, stream: str, lookahead_days: int) -> None:
    """Today's partition of `stream` and the next `lookahead_days` (UTC days), named
    `<stream>_YYYY_MM_DD` as Centrifugo names them."""
    today = dt.datetime.now(dt.UTC).date()
    for d in range(max(lookahead_days, 0) + 1):
        day = today + dt.timedelta(days=d)
        nxt = day + dt.timedelta(days=1)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {stream}_{day:%Y_%m_%d} PARTITION OF {stream} "
            f"FOR VALUES FROM ('{day:%Y-%m-%d} 00:00:00+00') TO ('{nxt:%Y-%m-%d} 00:00:00+00')"
        )


async def drop_old_partitions(conn: asyncpg.Connection, stream: str, retention_days: int) -> int:
    """Drop partitions of `stream` whose day is more than `retention_days` ago (0: keep
    all). Returns how many were dropped."""
    if retention_days <= 0:
        return 0
    cutoff = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=retention_days)
    rows = await conn.fetch(
        "SELECT n.nspname, c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.relname = $1 AND n.nspname = current_schema()",
        stream,
    )
    dropped = 0
    for schema, name in rows:
        m = _PARTITION_DATE.search(name)
        if m is None:
            continue
        day = dt.date(int(m[1]), int(m[2]), int(m[3]))
        if day < cutoff:
            await conn.execute(f'DROP TABLE IF EXISTS "{schema}"."{name}"')
            dropped += 1
    return dropped
