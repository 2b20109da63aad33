"""The PostgreSQL brokers (Centrifugo 6.8+'s `map_broker.type: postgres` and
`broker.type: postgres`):

- `maps.py`: PostgresMapBroker, the MapBroker of app/maps/broker.py over PostgreSQL;
- `schema.sql` + `schema.py`: the map broker's tables and functions and their creation;
- `maintenance.py`: the map broker's key expiry as removal publications, cleanup;
- `stream_broker.py`: PostgresStreamBroker, the node's Broker (history, fan-out);
- `stream_schema.sql` + `stream_schema.py`: its tables and functions and their creation;
- `ddl.py`: what both do alike to a schema (variants under an advisory lock, daily
  partitions, expired rows);
- `outbox.py`: each node's reader of a stream table (the fan-out), woken by NOTIFY;
- `controller.py` + `controller_schema.sql`: PostgresController, the node-to-node control
  messages of `controller.type: postgres` (its table read by outbox.py too).

Imported only when the config asks for it (app/engines/build.py), so the other engines never
load asyncpg.
"""

from __future__ import annotations

from app.config.schema import PostgresMapBrokerConfig
from app.config.schema_engines import PostgresControllerConfig, PostgresStreamBrokerConfig
from app.engines.postgres.controller import PostgresController
from app.engines.postgres.maps import OptionsOf, PostgresMapBroker
from app.engines.postgres.stream_broker import PostgresStreamBroker
from app.tls import ssl_context

__all__ = [
    "PostgresController",
    "PostgresMapBroker",
    "PostgresStreamBroker",
    "create_postgres_controller",
    "create_postgres_map_broker",
    "create_postgres_stream_broker",
]


def create_postgres_map_broker(
    section: PostgresMapBrokerConfig, options_of: OptionsOf, where: str = "map_broker.postgres"
) -> PostgresMapBroker:
    """The broker `section` describes (not connected). Zero or negative sizes and intervals
    take Centrifugo's defaults, as its setDefaults does."""
    ssl = ssl_context(section.tls, f"{where}.tls")
    outbox = section.outbox
    return PostgresMapBroker(
        section.dsn,
        options_of=options_of,
        connect_kwargs={"ssl": ssl} if ssl is not None else None,
        notify_dsn=section.notify_dsn,
        pool_size=section.pool_size if section.pool_size > 0 else 16,
        num_shards=section.num_shards if section.num_shards > 0 else 8,
        ttl_check_interval=float(section.ttl_check_interval) or 1.0,
        cleanup_interval=float(section.cleanup_interval) or 60.0,
        idempotent_result_ttl=float(section.idempotent_result_ttl) or 300.0,
        binary_data=section.binary_data,
        use_notify=section.use_notify,
        table_prefix=section.table_prefix.rstrip("_") or "cf",
        skip_schema_init=section.skip_schema_init,
        partition_lookahead_days=(
            section.partition_lookahead_days if section.partition_lookahead_days > 0 else 2
        ),
        # Centrifugo's config layer promotes 0 to 7 ("not set").
        partition_retention_days=(
            section.partition_retention_days if section.partition_retention_days > 0 else 7
        ),
        poll_interval=float(outbox.poll_interval) if float(outbox.poll_interval) > 0 else 0.1,
        batch_size=outbox.batch_size if outbox.batch_size > 0 else 1000,
    )


def create_postgres_stream_broker(
    section: PostgresStreamBrokerConfig, where: str = "broker.postgres"
) -> PostgresStreamBroker:
    """The broker `section` describes (not connected). Zero or negative sizes and intervals
    take Centrifugo's defaults, as its setDefaults does (createPostgresStreamBroker)."""
    ssl = ssl_context(section.tls, f"{where}.tls")
    outbox = section.outbox
    return PostgresStreamBroker(
        section.dsn,
        connect_kwargs={"ssl": ssl} if ssl is not None else None,
        notify_dsn=section.notify_dsn,
        pool_size=section.pool_size if section.pool_size > 0 else 16,
        num_shards=section.num_shards if section.num_shards > 0 else 8,
        cleanup_interval=float(section.cleanup_interval) if section.cleanup_interval > 0 else 60.0,
        idempotent_result_ttl=float(section.idempotent_result_ttl) or 300.0,
        binary_data=section.binary_data,
        stream_retention=float(section.stream_retention) or 86400.0,
        use_notify=section.use_notify,
        table_prefix=section.table_prefix.rstrip("_") or "cf",
        skip_schema_init=section.skip_schema_init,
        partition_lookahead_days=(
            section.partition_lookahead_days if section.partition_lookahead_days > 0 else 2
        ),
        # Unlike the map broker's, 0 is not promoted: the stream broker keeps every partition.
        partition_retention_days=section.partition_retention_days,
        poll_interval=float(outbox.poll_interval) if float(outbox.poll_interval) > 0 else 0.1,
        batch_size=outbox.batch_size if outbox.batch_size > 0 else 1000,
    )


def create_postgres_controller(
    section: PostgresControllerConfig, where: str = "controller.postgres"
) -> PostgresController:
    """The controller `section` describes (not connected). Zero or negative sizes and
    intervals take Centrifugo's defaults, as its setDefaults does; an empty DSN connects
    where libpq's defaults and PG* variables point, as pgx does."""
    ssl = ssl_context(section.tls, f"{where}.tls")
    return PostgresController(
        section.dsn,
        connect_kwargs={"ssl": ssl} if ssl is not None else None,
        notify_dsn=section.notify_dsn,
        pool_size=section.pool_size if section.pool_size > 0 else 8,
        num_shards=section.num_shards if section.num_shards > 0 else 1,
        table_prefix=section.table_prefix.rstrip("_") or "cf",
        poll_interval=float(section.poll_interval) if section.poll_interval > 0 else 0.05,
        use_notify=section.use_notify,
        partition_retention_days=(
            section.partition_retention_days if section.partition_retention_days > 0 else 1
        ),
        partition_lookahead_days=(
            section.partition_lookahead_days if section.partition_lookahead_days > 0 else 2
        ),
        partition_cleanup_interval=(
            float(section.partition_cleanup_interval)
            if section.partition_cleanup_interval > 0
            else 60.0
        ),
        batch_size=section.batch_size if section.batch_size > 0 else 1000,
        skip_schema_init=section.skip_schema_init,
    )
