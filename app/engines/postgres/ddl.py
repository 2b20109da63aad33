"""What the PostgreSQL brokers (map broker, stream broker) do alike to their schema
(Centrifugo's pgschema and pgoutbox.Partitioner): create one template's variants under an
advisory lock, refuse a newer schema version or an unpartitioned stream table, fit the
shard lock table to the number of shards, and keep the stream's daily partitions.

A broker describes each variant (JSONB data, BYTEA data) as a `SchemaVariant`: its
rendered SQL, split into tables and functions at the template's marker line (run apart, so
a CREATE OR REPLACE FUNCTION does not wait behind DDL of the same statement batch), and the
names of the three tables this module touches. Both variants are created whatever
`binary_data` says, as Centrifugo does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from importlib import resources
from typing import Protocol

import asyncpg

# Centrifugo's schemaVersion of both brokers; its migrations start at 2.
SCHEMA_VERSION = 1
FUNCTIONS_MARKER = "-- @@functions@@"
_PARTITION_DATE = re.compile(r"_(\d{4})_(\d{2})_(\d{2})$")


class SchemaError(Exception):
    """The database's schema cannot serve this server (newer version, not partitioned)."""


class SchemaVariant(Protocol):
    """One rendering of a broker's template and the tables `ensure_variants` works on."""

    @property
    def stream(self) -> str: ...

    @property
    def shard_lock(self) -> str: ...

    @property
    def schema_version(self) -> str: ...

    def render(self) -> tuple[str, str]:
        """(tables, functions) of this variant."""
        ...


def render_template(package: str, filename: str, replacements: dict[str, str]) -> tuple[str, str]:
    """The template `filename` of `package` with each placeholder replaced (longest first,
    so `__STREAM_TABLE__` is not eaten by a shorter one), split at the functions marker."""
    sql = resources.files(package).joinpath(filename).read_text()
    for placeholder in sorted(replacements, key=len, reverse=True):
        sql = sql.replace(placeholder, replacements[placeholder])
    tables, _, functions = sql.partition(FUNCTIONS_MARKER)
    return tables, functions


async def ensure_variants(
    conn: asyncpg.Connection,
    variants: Sequence[SchemaVariant],
    *,
    num_shards: int,
    lookahead_days: int,
    lock_key: int,
) -> None:
    """Create (or complete) every variant's tables and functions, fit the shard lock tables
    to `num_shards`, make the lookahead partitions. Idempotent; one transaction holding the
    advisory lock `lock_key` to commit, so the next worker waits, then finds all made."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        for v in variants:
            tables, functions = v.render()
            await conn.execute(tables)
            current = await conn.fetchval(
                f"SELECT schema_version FROM {v.schema_version} WHERE id = 1"
            )
            if current is not None and current > SCHEMA_VERSION:
                raise SchemaError(
                    f"{v.schema_version} is at version {current}, newer than this "
                    f"server's {SCHEMA_VERSION}"
                )
            partitioned = await conn.fetchval(
                "SELECT EXISTS(SELECT 1 FROM pg_partitioned_table WHERE partrelid = $1::regclass)",
                v.stream,
            )
            if not partitioned:
                raise SchemaError(f"{v.stream} exists but is not partitioned")
            await conn.execute(functions)
            # Every row must exist: a missing shard row would let a write go unserialized
            # (its FOR UPDATE locks nothing), and readers would skip rows.
            await conn.execute(
                f"INSERT INTO {v.shard_lock} (shard_id) "
                "SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                num_shards,
            )
            await conn.execute(f"DELETE FROM {v.shard_lock} WHERE shard_id >= $1", num_shards)
            await ensure_partitions(conn, v.stream, lookahead_days)


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


CLEANUP_BATCH = 1000  # Centrifugo's cleanupBatchSize


async def delete_expired(pool: asyncpg.Pool, meta: str, idempotency: str) -> int:
    """Delete meta rows (the channel's next write starts a new epoch) and idempotency
    results past their expiry, `CLEANUP_BATCH` rows per statement so no DELETE holds its
    locks long. Returns how many rows went."""
    removed = 0
    for sql in (
        f"DELETE FROM {meta} WHERE channel IN (SELECT channel FROM {meta} "
        "WHERE expires_at IS NOT NULL AND expires_at < NOW() LIMIT $1)",
        f"DELETE FROM {idempotency} WHERE (channel, idempotency_key) IN "
        f"(SELECT channel, idempotency_key FROM {idempotency} "
        "WHERE expires_at < NOW() LIMIT $1)",
    ):
        while True:
            status = await pool.execute(sql, CLEANUP_BATCH)
            n = int(status.rsplit(" ", 1)[-1])
            removed += n
            if n < CLEANUP_BATCH:
                break
    return removed
