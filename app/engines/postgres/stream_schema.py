"""The PostgreSQL stream broker's schema names and creation (Centrifugo's pgstreambroker
pgNames and EnsureSchema).

`stream_schema.sql` beside this module is the template; `ensure_stream_schema` renders it
for both variants (JSONB data and BYTEA data, whatever `binary_data` says, as Centrifugo
does) and creates them through ddl.py, which the map broker shares: under an advisory lock
of its own, shard lock rows fitted to `num_shards`, today's and the lookahead partitions
made, a newer schema version or an unpartitioned stream table refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.engines.postgres.ddl import ensure_variants, render_template

# Not the map broker's key: the two brokers may create their schemas at the same time.
_SCHEMA_LOCK_KEY = 5_067_066_999


@dataclass(frozen=True, slots=True)
class StreamNames:
    """Table, function and NOTIFY channel names of one variant: `<table_prefix>_stream_*`
    for JSONB data, `<table_prefix>_binary_stream_*` for BYTEA; the stream table is the
    prefix without its underscore (`cf_stream`)."""

    prefix: str
    binary: bool

    @classmethod
    def of(cls, table_prefix: str, binary: bool) -> StreamNames:
        base = table_prefix.rstrip("_") or "cf"
        return cls(f"{base}_binary_stream_" if binary else f"{base}_stream_", binary)

    @property
    def stream(self) -> str:
        return self.prefix.rstrip("_")

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
    def publish_join(self) -> str:
        return self.prefix + "publish_join"

    @property
    def publish_leave(self) -> str:
        return self.prefix + "publish_leave"

    @property
    def remove_history(self) -> str:
        return self.prefix + "remove_history"

    @property
    def notify_channel(self) -> str:
        return self.prefix + "notify"

    def render(self) -> tuple[str, str]:
        """(tables, functions) of this variant."""
        return render_template(
            __package__ or "app.engines.postgres",
            "stream_schema.sql",
            {
                "__STREAM_TABLE__": self.stream,
                "__PREFIX__": self.prefix,
                "__DATA_TYPE__": "BYTEA" if self.binary else "JSONB",
            },
        )


async def ensure_stream_schema(
    conn: asyncpg.Connection, table_prefix: str, num_shards: int, lookahead_days: int
) -> None:
    """Create (or complete) both variants, fit their shard lock tables to `num_shards`,
    make the lookahead partitions. Idempotent."""
    await ensure_variants(
        conn,
        [StreamNames.of(table_prefix, False), StreamNames.of(table_prefix, True)],
        num_shards=num_shards,
        lookahead_days=lookahead_days,
        lock_key=_SCHEMA_LOCK_KEY,
    )
