"""The engine sections of the config schema: Redis, the engine/broker/presence manager choice,
NATS, and the map broker (Redis, PostgreSQL). Re-exported by app/config/schema.py; see it for
what a schema class is and how field docstrings become `centrifugo configdoc`."""

from dataclasses import dataclass
from typing import Any

from app.config.schema_parts import (
    EnabledConfig,
    TLSConfig,
)
from app.config.section import Duration, Section, empty_map, subsection

__all__ = [
    "RedisConfig",
    "EngineConfig",
    "NatsRawModeConfig",
    "NatsConfig",
    "BrokerConfig",
    "PresenceManagerConfig",
    "RedisMapBrokerConfig",
    "PostgresMapBrokerOutboxConfig",
    "PostgresMapBrokerConfig",
    "PostgresStreamBrokerConfig",
    "MapBrokerConfig",
    "PostgresControllerConfig",
    "ControllerConfig",
]


@dataclass(frozen=True, slots=True)
class RedisConfig(Section):
    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    """Redis shards, one address each (`redis://[user:password@]host:6379/0`, `rediss://` for
    TLS, `unix://`, `redis+sentinel://`, `redis+cluster://`); with several, channels are spread
    over them by consistent hashing."""
    prefix: str = "centrifugo"
    """Prefix of every Redis key and PUB/SUB channel this server uses, so that unrelated setups
    can share one Redis."""
    connect_timeout: Duration = Duration(1.0)
    """How long to wait for a Redis connection (and its handshake) to be established."""
    io_timeout: Duration = Duration(4.0)
    """How long a Redis command may take before it fails: in effect the timeout of each request
    to Redis."""
    db: int = 0
    """Redis database selected after connecting. PUB/SUB ignores databases, so setups sharing one
    Redis with different `db` still need different `prefix` values."""
    user: str = ""
    """User name for Redis ACL authentication; empty uses the default user."""
    password: str = ""
    """Password sent with `AUTH` on every connection; empty sends none."""
    client_name: str = ""
    """Name set with `CLIENT SETNAME` on every data connection; empty sets none."""
    force_resp2: bool = False
    """Make Centrifugo's Redis client speak RESP2 instead of RESP3. This server always speaks
    RESP2, so the key changes nothing here."""
    cluster_address: tuple[str, ...] = ()
    """Seed nodes (`host:port`) of a Redis Cluster; when set, `address` is not used. Here every
    item is a seed of one cluster (Centrifugo reads several items as several clusters sharded by
    consistent hashing)."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the data connections to Redis (a `rediss://` address turns it on as well)."""
    sentinel_address: tuple[str, ...] = ()
    """Redis Sentinels (`host:port`) that locate the master named `sentinel_master_name`; when
    set, `address` is not used. Here every item is a Sentinel of one master (Centrifugo reads
    several items as several shards)."""
    sentinel_user: str = ""
    """User name for authenticating with the Sentinels."""
    sentinel_password: str = ""
    """Password for authenticating with the Sentinels."""
    sentinel_master_name: str = ""
    """Name of the master the Sentinels watch; required with `sentinel_address`."""
    sentinel_client_name: str = ""
    """Name set with `CLIENT SETNAME` on connections to the Sentinels; empty sets none."""
    sentinel_tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connections to the Sentinels."""
    history_use_lists: bool = False
    """Keep history in Redis lists instead of streams (no pagination, reverse order or idempotent
    publish). Not implemented here: history always uses streams."""
    replica_client: EnabledConfig = subsection(EnabledConfig)
    """Send read commands to Redis replicas. Not implemented here: every command goes to the
    master."""
    presence_ttl: Duration = Duration(60.0)
    """How long a client's presence entry stays in Redis without being refreshed; entries of a
    node that died vanish after this."""
    presence_hash_field_ttl: bool = False
    """Expire presence entries with per-field hash TTLs (Redis 7.4+). Not implemented here:
    presence keeps a hash and a sorted set of expiry times."""
    presence_user_mapping: bool = False
    """Keep a separate hash of users per channel so that presence stats are cheaper. Not
    implemented here (the classic presence layout only)."""


@dataclass(frozen=True, slots=True)
class EngineConfig(Section):
    type: str = "memory"
    """Engine that serves as both broker and presence manager: `memory` (one worker, nothing
    shared, lost on restart) or `redis` (shared by workers and nodes)."""
    redis: RedisConfig = subsection(RedisConfig)
    """Redis connection and options of the `redis` engine."""


@dataclass(frozen=True, slots=True)
class NatsRawModeConfig(Section):
    enabled: bool = False
    """Talk to NATS without the broker's subject prefix and without Centrifugo's message
    encoding: publications go to NATS as their data bytes, what arrives on a subject is handed
    to the channel's subscribers as it is, and join/leave, tags and client info are not sent."""
    channel_replacements: dict[str, str] = empty_map()
    """Substrings replaced in channel names before they become NATS subjects, e.g. `{":": "."}`
    maps `chat:index` to `chat.index`; messages from that subject are delivered in the original
    channel."""
    prefix: str = ""
    """Prefix added to subjects when publishing and subscribing in raw mode, and stripped from
    subjects of received messages; empty adds none."""


@dataclass(frozen=True, slots=True)
class NatsConfig(Section):
    url: str = "nats://localhost:4222"
    """Address of the NATS server (`nats://`, `tls://`, `ws://` or `wss://`); several,
    comma-separated, for a cluster."""
    prefix: str = "centrifugo"
    """Prefix of NATS subjects (`<prefix>.client.<channel>`, `<prefix>.control`,
    `<prefix>.node.<id>`), so unrelated setups can share one NATS server."""
    dial_timeout: Duration = Duration(1.0)
    """How long to wait for the connection to NATS; reconnection is then retried every 2s
    for as long as NATS is away."""
    write_timeout: Duration = Duration(1.0)
    """How long a flush of writes to NATS may take."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connection to NATS."""
    allow_wildcards: bool = False
    """Let clients subscribe to channels with NATS wildcards (`*`, `>`); each publication then
    carries its concrete channel. Publishing to a wildcard channel is always refused. Such
    subscriptions have no meaningful join/leave events or presence; check permissions with care."""
    raw_mode: NatsRawModeConfig = subsection(NatsRawModeConfig)
    """Raw mode: channel names used as NATS subjects unchanged and payloads passed through
    untouched."""


@dataclass(frozen=True, slots=True)
class PostgresMapBrokerOutboxConfig(Section):
    """``outbox`` of ``map_broker.postgres`` and ``broker.postgres`` (Centrifugo's
    PostgresMapBrokerOutbox, used by both): how each node reads the stream table."""

    poll_interval: Duration = Duration(0.1)
    """How often an idle node polls the stream table for new entries; `0` means `100ms`."""
    batch_size: int = 1000
    """Most stream rows read and delivered in one batch; `0` means `1000`."""


@dataclass(frozen=True, slots=True)
class PostgresStreamBrokerConfig(Section):
    """``broker.postgres`` (Centrifugo 6.8+'s PostgresStreamBroker, engine.go; the broker is
    app/engines/postgres/stream_broker.py). Names and defaults are Centrifugo's."""

    dsn: str = ""
    """Connection string of the PostgreSQL database holding history and fan-out, e.g.
    `postgres://user:pass@localhost:5432/db?sslmode=disable`. Required."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for every PostgreSQL connection of the broker (pool and `LISTEN`), instead of TLS
    parameters in the DSN."""
    pool_size: int = 16
    """Most connections in each worker's pool; `0` means `16`."""
    num_shards: int = 8
    """Number of shards channels are hashed onto; publications of one shard are written one
    at a time and read in order. Every node sharing the database must use the same number;
    `0` means `8`."""
    cleanup_interval: Duration = Duration(60.0)
    """How often expired channel metadata and idempotency results are deleted and daily
    partitions of the stream table created ahead or dropped; `0` means `1m`."""
    idempotent_result_ttl: Duration = Duration(300.0)
    """How long the result of a publication with an idempotency key is kept when the
    publication sets no TTL of its own; `0` means `5m`."""
    binary_data: bool = False
    """Store payloads in `BYTEA` columns instead of `JSONB`; needed when payloads are not JSON
    (binary, Protobuf). With `JSONB`, JSON comes back in PostgreSQL's normal form."""
    stream_retention: Duration = Duration(86400.0)
    """How long a channel's stream metadata (epoch, top offset) lives after its last
    publication when the publication gives no metadata TTL (channels without history); `0`
    means `24h`."""
    use_notify: bool = False
    """Wake the readers of the stream table with `LISTEN`/`NOTIFY` for lower latency;
    without it each node polls every `outbox.poll_interval`."""
    notify_dsn: str = ""
    """Connection string for the `LISTEN` connection when it must differ from `dsn`, e.g. a
    direct database address when `dsn` points at PgBouncer; empty uses `dsn`."""
    table_prefix: str = "cf"
    """Prefix of every table and function the broker creates (`cf` gives `cf_stream`,
    `cf_stream_meta`, `cf_stream_publish`, ...), so several clusters can share one
    database."""
    skip_schema_init: bool = False
    """Do not create the tables and functions at start; they must then exist (managed by
    migrations)."""
    outbox: PostgresMapBrokerOutboxConfig = subsection(PostgresMapBrokerOutboxConfig)
    """How each node reads the stream table."""
    partition_lookahead_days: int = 2
    """How many future daily partitions of the stream table are created ahead, so writes
    never fail at midnight; `0` means `2`."""
    partition_retention_days: int = 7
    """Age in days after which a daily partition of the stream table is dropped whole; no
    history older than that survives; `0` keeps every partition."""


@dataclass(frozen=True, slots=True)
class BrokerConfig(Section):
    enabled: bool = False
    """Use the broker configured here for PUB/SUB, history and idempotency instead of the one
    `engine` provides."""
    type: str = "memory"
    """Broker implementation: `memory`, `redis`, `nats` or `postgres`."""
    redis: RedisConfig = subsection(RedisConfig)
    """Redis connection and options of the `redis` broker."""
    nats: NatsConfig = subsection(NatsConfig)
    """Options of the `nats` broker: at-most-once PUB/SUB and node-to-node control over NATS, no
    history (history, recovery and positioning answer error 108)."""
    # Not implemented (reported by app/config/support.py when set): kept opaque.
    redisnats: dict[str, Any] = empty_map()
    """Centrifugo's experimental Redis + NATS broker. Not implemented here; accepted as an opaque
    object so configs that have it still load."""
    postgres: PostgresStreamBrokerConfig = subsection(PostgresStreamBrokerConfig)
    """Database and options of the `postgres` broker: history and fan-out in PostgreSQL tables
    (presence then comes from `engine` or `presence_manager`)."""


@dataclass(frozen=True, slots=True)
class PresenceManagerConfig(Section):
    enabled: bool = False
    """Use the presence manager configured here instead of the one `engine` provides."""
    type: str = "memory"
    """Presence manager implementation: `memory` or `redis`."""
    redis: RedisConfig = subsection(RedisConfig)
    """Redis connection and options of the `redis` presence manager."""


@dataclass(frozen=True, slots=True)
class RedisMapBrokerConfig(RedisConfig):
    """``map_broker.redis`` (Centrifugo's RedisMapBroker): a Redis deployment of its own,
    read like every other ``redis`` section (the engine-only keys it inherits are Centrifugo's
    ``engine.redis`` extras and do nothing here), plus the map broker's own settings."""

    # How often expired keys become removal publications; -1s (negative) disables it.
    cleanup_interval: Duration = Duration(1.0)
    """How often keys of map channels that passed their TTL are removed and published as
    removals; a negative value (`-1s`) turns this off."""
    cleanup_batch_size: int = 100
    """Most expired keys removed per channel in one cleanup pass."""
    idempotent_result_ttl: Duration = Duration(300.0)
    """How long the result of a map write with an idempotency key is kept, so a retry gets the
    same answer; used when the write sets none."""
    skip_pub_sub: bool = False
    """Change map state in Redis without publishing the changes to subscribers, for setups where
    another component does the PUB/SUB."""


@dataclass(frozen=True, slots=True)
class PostgresMapBrokerConfig(Section):
    """``map_broker.postgres`` (Centrifugo's PostgresMapBroker, engine.go; the broker is
    app/engines/postgres/). Names and defaults are Centrifugo's."""

    dsn: str = ""
    """Connection string of the PostgreSQL database, e.g.
    `postgres://user:pass@localhost:5432/db?sslmode=disable`."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for every PostgreSQL connection (pool and LISTEN), as an alternative to TLS parameters
    in the DSN."""
    pool_size: int = 16
    """Most connections in the pool; `0` means `16`."""
    num_shards: int = 8
    """Number of delivery shards channels are hashed onto, each read in order; `0` means `8`."""
    ttl_check_interval: Duration = Duration(1.0)
    """How often keys past their TTL are removed (and published as removals); `0` means `1s`, a
    negative value turns it off."""
    cleanup_interval: Duration = Duration(60.0)
    """How often expired channel metadata and idempotency results are deleted and daily stream
    partitions created or dropped; `0` means `1m`."""
    idempotent_result_ttl: Duration = Duration(300.0)
    """How long the result of a write with an idempotency key is kept when the write sets no TTL
    of its own; `0` means `5m`."""
    binary_data: bool = False
    """Store payloads in `BYTEA` columns instead of `JSONB`; needed when payloads are not JSON
    (binary, Protobuf)."""
    # Centrifugo reads it nowhere either: the stream is kept by partition_retention_days.
    stream_retention: Duration = Duration(86400.0)
    """How long stream entries are meant to be kept. Read by neither Centrifugo nor this server:
    `partition_retention_days` decides."""
    use_notify: bool = False
    """Wake the stream reader with `LISTEN`/`NOTIFY` for lower latency; without it the reader
    only polls (`outbox.poll_interval`)."""
    notify_dsn: str = ""
    """Connection string for the `LISTEN` connection when it must differ from `dsn`, e.g. a
    direct database address when `dsn` points at PgBouncer; empty uses `dsn`."""
    table_prefix: str = "cf"
    """Prefix of every table and function the broker creates, so several clusters can share one
    database."""
    skip_schema_init: bool = False
    """Do not create the tables and functions at start; they must then exist (managed by
    migrations)."""
    outbox: PostgresMapBrokerOutboxConfig = subsection(PostgresMapBrokerOutboxConfig)
    """How each node reads the stream table."""
    partition_lookahead_days: int = 2
    """How many future daily stream partitions are created ahead, so writes never fail at
    midnight; `0` means `2`."""
    partition_retention_days: int = 7
    """Age in days after which a daily stream partition is dropped whole, which bounds how far
    back recovery reaches; `0` means `7`."""


@dataclass(frozen=True, slots=True)
class MapBrokerConfig(Section):
    """``map_broker`` (Centrifugo's MapBroker, engine.go): where map channels live."""

    type: str = "memory"  # memory | redis | postgres
    """Where map channels keep their state: `memory`, `redis` or `postgres`."""
    redis: RedisMapBrokerConfig = subsection(RedisMapBrokerConfig)
    """Redis connection and options of the `redis` map broker."""
    postgres: PostgresMapBrokerConfig = subsection(PostgresMapBrokerConfig)
    """Database and options of the `postgres` map broker."""


@dataclass(frozen=True, slots=True)
class PostgresControllerConfig(Section):
    """``controller.postgres`` (Centrifugo 6.8+'s PostgresController, configtypes/engine.go;
    the controller is app/engines/postgres/controller.py). Names and defaults are Centrifugo's."""

    dsn: str = ""
    """Connection string of the PostgreSQL database the control messages pass through, e.g.
    `postgres://user:pass@localhost:5432/db?sslmode=disable`. Required."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for every PostgreSQL connection of the controller (pool and `LISTEN`), instead of
    TLS parameters in the DSN."""
    pool_size: int = 8
    """Most connections in each worker's pool; `0` means `8`."""
    num_shards: int = 1
    """Number of shards control messages are spread over; messages of one shard are written
    one at a time and read in order. One is plenty for control traffic; `0` means `1`."""
    table_prefix: str = "cf"
    """Prefix of the tables and the function the controller creates (`cf` gives
    `cf_controller_messages`, `cf_controller_shard_lock`, `cf_controller_publish`), so
    several clusters can share one database."""
    poll_interval: Duration = Duration(0.05)
    """How often each node looks for new control messages while nothing woke it; `0` means
    `50ms`."""
    use_notify: bool = False
    """Wake the readers with `LISTEN`/`NOTIFY` as soon as a message is written instead of
    waiting for the next poll. Centrifugo's reference calls the default true, but its
    config loads it false when unset, as here."""
    notify_dsn: str = ""
    """Connection string for the `LISTEN` connection when it must differ from `dsn`, e.g. a
    direct database address when `dsn` points at PgBouncer in transaction mode; empty uses
    `dsn`."""
    partition_retention_days: int = 1
    """Age in days after which a daily partition of the messages table is dropped whole
    (control messages matter only for moments); `0` means `1`."""
    partition_lookahead_days: int = 2
    """How many future daily partitions of the messages table are created ahead, so writes
    never fail at midnight; `0` means `2`."""
    partition_cleanup_interval: Duration = Duration(60.0)
    """How often each node creates partitions ahead and drops old ones; `0` means `1m`."""
    batch_size: int = 1000
    """Most messages read from one shard in one query; `0` means `1000`."""
    skip_schema_init: bool = False
    """Do not create the tables and the function at start; they must then exist (managed by
    migrations)."""


@dataclass(frozen=True, slots=True)
class ControllerConfig(Section):
    enabled: bool = False
    """Send node-to-node control messages (API actions by user, surveys, heartbeats,
    emulation) through the controller configured here instead of through the broker."""
    type: str = ""
    """Controller implementation: `postgres` (the only one Centrifugo's open-source server
    has)."""
    postgres: PostgresControllerConfig = subsection(PostgresControllerConfig)
    """Database and options of the `postgres` controller: control messages as rows of a
    PostgreSQL table every node reads, for brokers without a control channel of their own
    (`broker.type: postgres`)."""
