"""The PostgreSQL map broker's schema names and creation (Centrifugo's pgmapbroker
EnsureSchema).

`schema.sql` beside this module is the template (tables, indexes, the write functions);
`ensure_schema` renders it for both variants (JSONB data and BYTEA data, whatever
`binary_data` says, as Centrifugo does) and creates them through ddl.py (shared with the
stream broker): under an advisory lock, so the workers of one server (and several servers)
starting at once do not race on CREATE; shard lock rows fitted; today's and the next
`lookahead_days` partitions made. The version table is Centrifugo's (schema version 1, no
migrations yet); a database at a newer version is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.engines.postgres.ddl import (
    SCHEMA_VERSION,
    SchemaError,
    drop_old_partitions,
    ensure_partitions,
    ensure_variants,
    render_template,
)

__all__ = [
    "SCHEMA_VERSION",
    "PgNames",
    "SchemaError",
    "drop_old_partitions",
    "ensure_partitions",
    "ensure_schema",
    "render",
]

# Any constant unlikely to be another program's advisory lock key.
_SCHEMA_LOCK_KEY = 4_067_066_999


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

    def render(self) -> tuple[str, str]:
        return render(self)


def render(names: PgNames) -> tuple[str, str]:
    """The template for one variant, split into (tables, functions)."""
    return render_template(
        __package__ or "app.engines.postgres",
        "schema.sql",
        {"__PREFIX__": names.prefix, "__DATA_TYPE__": "BYTEA" if names.binary else "JSONB"},
    )


async def ensure_schema(
    conn: asyncpg.Connection, table_prefix: str, num_shards: int, lookahead_days: int
) -> None:
    """Create (or complete) both variants' tables and functions, fit the shard lock
    tables to `num_shards`, make the lookahead partitions. Idempotent."""
    await ensure_variants(
        conn,
        [PgNames.of(table_prefix, False), PgNames.of(table_prefix, True)],
        num_shards=num_shards,
        lookahead_days=lookahead_days,
        lock_key=_SCHEMA_LOCK_KEY,
    )
