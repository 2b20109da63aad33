"""Centrifugo v6 configuration schema: the top-level sections and `Config`, frozen dataclasses.

The dataclass tree *is* the schema: attribute paths equal Centrifugo v6 key paths
(``cfg.client.token.hmac_secret_key``), and the loader walks the same classes to know every
key, its type, its environment variable name and its default (app/config/section.py).
Durations are float seconds in Python and Go duration strings ("25s") on disk.

The loaded result is immutable and cheap to read on hot paths (slots, no properties except
``ChannelOptions.history_enabled`` and ``ChannelOptions.is_map``). Shared pieces live in
schema_parts.py, the channel and RPC sections in schema_channel.py.

The string under each field (an attribute docstring) is that key's description in
`centrifugo configdoc` (app/config/docs.py reads them), so reference and schema cannot drift:
a field without one fails tests/unit/test_configdoc.py. Facts come from Centrifugo's `doc`
tags and comments (internal/configtypes); where this server behaves otherwise, the text says
what it does.
"""

from dataclasses import dataclass, field
from typing import Any

from app.config.schema_channel import ChannelConfig, ChannelOptions, RpcConfig
from app.config.schema_parts import (
    CodeTransformsConfig,
    EnabledConfig,
    EnabledProxyConfig,
    NamedProxyConfig,
    TLSAutocertConfig,
    TLSConfig,
)
from app.config.section import Duration, Section, UnixTime, empty_map, subsection

__all__ = [
    "HTTPServerConfig",
    "LogConfig",
    "RedisConfig",
    "EngineConfig",
    "NatsRawModeConfig",
    "NatsConfig",
    "BrokerConfig",
    "PresenceManagerConfig",
    "RedisMapBrokerConfig",
    "MapBrokerConfig",
    "PostgresMapBrokerConfig",
    "PostgresMapBrokerOutboxConfig",
    "SharedPollConfig",
    "TokenConfig",
    "SubscriptionTokenConfig",
    "ClientProxyConfig",
    "PersonalChannelConfig",
    "ClientConfig",
    "HttpAPIConfig",
    "GrpcAPIConfig",
    "WebSocketConfig",
    "SSEConfig",
    "HTTPStreamConfig",
    "EmulationConfig",
    "WebTransportConfig",
    "UniWebSocketConfig",
    "UniSSEConfig",
    "UniHTTPStreamConfig",
    "UniGRPCConfig",
    "AdminConfig",
    "PrometheusConfig",
    "HealthConfig",
    "SwaggerConfig",
    "DebugConfig",
    "InitConfig",
    "OpenTelemetryConfig",
    "GraphiteConfig",
    "UsageStatsConfig",
    "NodeConfig",
    "ShutdownConfig",
    "Config",
]


@dataclass(frozen=True, slots=True)
class HTTPServerConfig(Section):
    address: str = ""
    """Interface the main HTTP listener binds to; empty listens on every interface."""
    port: int = 8000
    """TCP port of the main HTTP listener: client transports, and every other endpoint unless
    `internal_port` is set."""
    internal_address: str = ""
    """Interface the internal listener binds to when `internal_port` is set; empty falls back to
    `address`."""
    internal_port: int = 0
    """Port of its own for the internal endpoints (server HTTP API, metrics, health, admin),
    which then answer only there while client transports stay on `port`. `0` serves everything on
    `port`."""
    tls: TLSConfig = subsection(TLSConfig)
    """Certificate and key for the main listener; also used on the internal port unless
    `internal_tls` or `tls_external` says otherwise."""
    tls_autocert: TLSAutocertConfig = subsection(TLSAutocertConfig)
    """Certificates obtained automatically from an ACME provider such as Let's Encrypt. Not
    implemented here: enabling it stops start-up; put a certificate in `tls` instead."""
    tls_external: bool = False
    """With a separate `internal_port`, keep `tls` on the main port only and serve the internal
    port in plain HTTP."""
    internal_tls: TLSConfig = subsection(TLSConfig)
    """TLS of the internal port when it needs its own certificate; when not enabled the internal
    port follows `tls` (or plain HTTP with `tls_external`)."""
    http3: EnabledConfig = subsection(EnabledConfig)
    """HTTP/3 (QUIC) on the main port, experimental in Centrifugo. Not implemented here (a
    warning at start)."""
    h2c_external: bool = False
    """Cleartext HTTP/2 (h2c) on the main port, which Centrifugo allows only with a separate
    `internal_port`. Not served here (HTTP/1.1 and WebSocket only)."""


@dataclass(frozen=True, slots=True)
class LogConfig(Section):
    level: str = "info"
    """Least severe level written: `none`, `trace`, `debug`, `info`, `warn`, `error` or `fatal`
    (`trace` logs as `debug`; `none` writes nothing)."""
    file: str = ""
    """Path of a file the log lines (JSON) are appended to; empty writes them to standard error."""


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
    """Talk to NATS without prefixing channel names and hand NATS messages to subscribers as they
    are (NATS broker only, which is not implemented here)."""
    channel_replacements: dict[str, str] = empty_map()
    """Substrings replaced in channel names before they become NATS subjects, e.g. `{":": "."}`
    maps `chat:index` to `chat.index`."""
    prefix: str = ""
    """Prefix added to subjects when publishing and subscribing in raw mode, and stripped from
    subjects of received messages; empty adds none."""


@dataclass(frozen=True, slots=True)
class NatsConfig(Section):
    url: str = "nats://localhost:4222"
    """Address of the NATS server."""
    prefix: str = "centrifugo"
    """Prefix of NATS subjects, so unrelated setups can share one NATS server."""
    dial_timeout: Duration = Duration(1.0)
    """How long to wait for the connection to NATS."""
    write_timeout: Duration = Duration(1.0)
    """How long a write to NATS may take."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS for the connection to NATS."""
    allow_wildcards: bool = False
    """Let clients subscribe to NATS wildcard subjects; such subscriptions have no join/leave
    events and no presence."""
    raw_mode: NatsRawModeConfig = subsection(NatsRawModeConfig)
    """Raw mode: channel names used as NATS subjects unchanged and payloads passed through
    untouched."""


@dataclass(frozen=True, slots=True)
class BrokerConfig(Section):
    enabled: bool = False
    """Use the broker configured here for PUB/SUB, history and idempotency instead of the one
    `engine` provides."""
    type: str = "memory"
    """Broker implementation: `memory` or `redis` here (Centrifugo also has `nats` and
    `postgres`)."""
    redis: RedisConfig = subsection(RedisConfig)
    """Redis connection and options of the `redis` broker."""
    nats: NatsConfig = subsection(NatsConfig)
    """Options of Centrifugo's NATS broker (at-most-once PUB/SUB, no history). Not implemented
    here."""
    # Not implemented (reported by app/config/support.py when set): kept opaque.
    redisnats: dict[str, Any] = empty_map()
    """Centrifugo's experimental Redis + NATS broker. Not implemented here; accepted as an opaque
    object so configs that have it still load."""
    postgres: dict[str, Any] = empty_map()
    """Centrifugo's PostgreSQL stream broker. Not implemented here; accepted as an opaque object
    so configs that have it still load."""


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
class PostgresMapBrokerOutboxConfig(Section):
    """``map_broker.postgres.outbox``: how each node reads the stream table."""

    poll_interval: Duration = Duration(0.1)
    """How often an idle node polls the stream table for new entries; `0` means `100ms`."""
    batch_size: int = 1000
    """Most stream rows read and delivered in one batch; `0` means `1000`."""


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
class SharedPollConfig(Section):
    """Top-level ``shared_poll`` (Centrifugo's SharedPoll, types.go): the HMAC keys that sign
    tracked items, and how many refresh calls run at once (0: 64, centrifuge's default)."""

    hmac_secret_key: str = ""
    """HMAC key that signs and verifies the items clients track in shared poll channels."""
    hmac_previous_secret_key: str = ""
    """The HMAC key used before the current one, still accepted while keys are rotated."""
    hmac_previous_secret_key_valid_until: UnixTime = UnixTime(0)
    """Until when the previous key is accepted, as Unix seconds (or an RFC 3339 time); `0`
    accepts it with no end."""
    concurrency_limit: int = 0
    """Most refresh calls to the backend in flight at once, over all shared poll channels; `0`
    means `64`."""


@dataclass(frozen=True, slots=True)
class TokenConfig(Section):
    hmac_secret_key: str = ""
    """Shared secret that verifies HMAC-signed JWTs (`HS256`, `HS384`, `HS512`); empty refuses
    HMAC tokens unless the previous key is set."""
    hmac_previous_secret_key: str = ""
    """The HMAC secret used before `hmac_secret_key`, still accepted during a key rotation."""
    hmac_previous_secret_key_valid_until: UnixTime = UnixTime(0)
    """Until when `hmac_previous_secret_key` is accepted, as Unix seconds (or an RFC 3339 time);
    `0` accepts it with no end."""
    rsa_public_key: str = ""
    """RSA public key (PEM text, base64 PEM or a file path) that verifies `RS256`, `RS384` and
    `RS512` tokens."""
    ecdsa_public_key: str = ""
    """ECDSA public key (PEM text, base64 PEM or a file path) that verifies `ES256`, `ES384` and
    `ES512` tokens."""
    jwks_public_endpoint: str = ""
    """URL of a JSON Web Key Set the verifying keys are fetched from (and cached); may contain
    `{{var}}` placeholders filled from named groups of `issuer_regex` or `audience_regex`."""
    audience: str = ""
    """Required value of the token's `aud` claim; empty does not check it."""
    audience_regex: str = ""
    """Regular expression the token's `aud` claim must match, instead of a fixed `audience`."""
    issuer: str = ""
    """Required value of the token's `iss` claim; empty does not check it."""
    issuer_regex: str = ""
    """Regular expression the token's `iss` claim must match, instead of a fixed `issuer`."""
    user_id_claim: str = "sub"
    """Claim the user ID is read from; empty means the standard `sub`."""
    insecure_skip_jwks_endpoint_safety_check: bool = False
    """Allow `{{var}}` placeholders in `jwks_public_endpoint` that come from regex groups other
    than a list of literal alternatives; such a URL can be steered by whoever crafts the token,
    so this is unsafe."""


@dataclass(frozen=True, slots=True)
class SubscriptionTokenConfig(TokenConfig):
    enabled: bool = False
    """Verify subscription tokens with the keys and checks of this section; `client.token` then
    verifies connection tokens only."""


@dataclass(frozen=True, slots=True)
class ClientProxyConfig(Section):
    connect: EnabledProxyConfig = subsection(EnabledProxyConfig)
    """Ask the backend over the connect proxy when a client connects without a token."""
    refresh: EnabledProxyConfig = subsection(EnabledProxyConfig)
    """Ask the backend over the refresh proxy when a connection's expiry comes, instead of the
    client sending a new token."""


@dataclass(frozen=True, slots=True)
class PersonalChannelConfig(Section):
    enabled: bool = False
    """Subscribe every connection with a user ID to that user's personal channel (`#user`, or
    `namespace:#user`) on the server side at connect."""
    personal_channel_namespace: str = ""
    """Namespace of the personal channels; empty puts them in no namespace."""
    single_connection: bool = False
    """Keep one connection per user: a new connection disconnects the user's older ones (needs
    presence on the personal channel's namespace)."""


@dataclass(frozen=True, slots=True)
class ClientConfig(Section):
    proxy: ClientProxyConfig = subsection(ClientProxyConfig)
    """Proxies to the backend for connection-wide events (connect, refresh)."""
    allowed_origins: tuple[str, ...] = ()
    """Origins (glob patterns, `*` for any) allowed to open browser connections; requests without
    an `Origin` header always pass, and an empty list refuses every request that has one."""
    token: TokenConfig = subsection(TokenConfig)
    """Keys and claim checks that verify connection tokens, and subscription tokens too unless
    `subscription_token.enabled`."""
    subscription_token: SubscriptionTokenConfig = subsection(SubscriptionTokenConfig)
    """Separate keys and claim checks for subscription tokens."""
    allow_anonymous_connect_without_token: bool = False
    """Accept connections that bring no token (and that no connect proxy handles) as anonymous
    users with an empty user ID."""
    disallow_anonymous_connection_tokens: bool = False
    """Refuse connection tokens whose user ID is empty."""
    ping_interval: Duration = Duration(25.0)
    """How often the server sends a protocol ping to each client; `-1s` turns pings off."""
    pong_timeout: Duration = Duration(8.0)
    """How long after a ping the client's pong may take before the connection is closed; must be
    less than `ping_interval`, `-1s` turns the check off."""
    expired_close_delay: Duration = Duration(25.0)
    """Grace period after a connection's token expires for the client to refresh it before it is
    disconnected."""
    expired_sub_close_delay: Duration = Duration(25.0)
    """Grace period after a subscription token expires for the client to refresh it before the
    subscription is ended."""
    stale_close_delay: Duration = Duration(10.0)
    """How long a connection that has sent no connect command is kept open."""
    channel_limit: int = 128
    """Most channels one connection may be subscribed to; `0` means no limit."""
    queue_max_size: int = 1048576
    """Most bytes waiting to be sent to one connection; a client that falls further behind is
    disconnected as slow."""
    presence_update_interval: Duration = Duration(27.0)
    """How often each client's presence in its channels is refreshed."""
    concurrency: int = 0
    """Most commands of one connection run at the same time; `0` or `1` runs them one after
    another, in order."""
    channel_position_check_delay: Duration = Duration(40.0)
    """How often subscriptions with positioning verify that they have missed no publication; `0`
    turns the check off."""
    channel_position_max_time_lag: Duration = Duration(0.0)
    """Largest PUB/SUB delay a positioned subscription tolerates before it is treated as having
    lost state; `0` ignores the delay. Not implemented here: only the stream position is checked."""
    connection_limit: int = 0
    """Most client connections one worker accepts (each worker is a node); `0` means no limit.
    Over it, connection requests get HTTP 503."""
    user_connection_limit: int = 0
    """Most connections one user may hold on one worker; `0` means no limit."""
    connection_rate_limit: int = 0
    """Most new connection requests per second the whole server accepts, shared by its workers;
    `0` means no limit. Over it, HTTP 503."""
    connect_include_server_time: bool = False
    """Put the server's current Unix time in the connect reply."""
    history_max_publication_limit: int = 300
    """Most publications one client history request returns."""
    recovery_max_publication_limit: int = 300
    """Most publications a subscription may recover; when more were missed, none are sent and the
    subscription is reported as not recovered."""
    insecure_skip_token_signature_verify: bool = False
    """Accept tokens without checking their signature. For tests only: anyone can forge a token."""
    user_id_http_header: str = ""
    """Request header that carries the user ID, set by a trusted proxy in front of the server;
    when present the client is that user without a token. Empty turns this off."""
    insecure: bool = False
    """Turn off client authentication and channel permission checks (connect without a token,
    subscribe and publish anywhere). For development only."""
    subscribe_to_user_personal_channel: PersonalChannelConfig = subsection(PersonalChannelConfig)
    """Server-side subscription of each user to a personal channel."""
    connect_code_to_unidirectional_disconnect: CodeTransformsConfig = subsection(
        CodeTransformsConfig
    )
    """How connect errors (including those a connect proxy returns) become disconnect codes on
    unidirectional transports."""


@dataclass(frozen=True, slots=True)
class HttpAPIConfig(Section):
    disabled: bool = False
    """Do not serve the server HTTP API."""
    handler_prefix: str = "/api"
    """Path of the server HTTP API; methods are served at `<prefix>/<method>`."""
    key: str = ""
    """API key callers send in `X-API-Key` (or `Authorization: apikey <key>`); requests are
    refused while it is empty, unless `insecure`."""
    error_mode: str = ""
    """`transport` answers errors with an HTTP status and a `{"code", "message"}` body; empty
    answers HTTP 200 with an `error` object."""
    external: bool = False
    """Serve the API on the main port even when `http_server.internal_port` is set."""
    insecure: bool = False
    """Serve the API without an API key. Only behind a firewall."""


@dataclass(frozen=True, slots=True)
class GrpcAPIConfig(Section):
    enabled: bool = False
    """Serve the server API over gRPC on its own port."""
    error_mode: str = ""
    """`transport` answers errors as gRPC status codes; empty returns them inside the reply
    message."""
    address: str = ""
    """Interface the gRPC API listens on; empty listens on every interface."""
    port: int = 10000
    """Port of the gRPC API server."""
    key: str = ""
    """API key callers send as metadata `authorization: apikey <key>`; empty requires none."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS of the gRPC API server."""
    reflection: bool = False
    """Register gRPC server reflection, so tools such as `grpcurl` can list and describe the API
    service."""
    max_receive_message_size: int = 0
    """Largest request message the gRPC API accepts, in bytes; `0` keeps gRPC's default (4 MiB)."""


@dataclass(frozen=True, slots=True)
class WebSocketConfig(Section):
    disabled: bool = False
    """Do not serve the bidirectional WebSocket endpoint."""
    handler_prefix: str = "/connection/websocket"
    """Path of the bidirectional WebSocket endpoint."""
    compression: bool = False
    """Offer permessage-deflate compression to clients that ask for it; costs CPU for every
    message."""
    compression_min_size: int = 0
    """Messages of at most this many bytes are sent uncompressed; `0` compresses every message
    (with `compression` on)."""
    compression_level: int = 1
    """Deflate level, `1` (fastest) to `9` (smallest); a value outside `-2..9` is logged and `1`
    used."""
    read_buffer_size: int = 0
    """Read buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    use_write_buffer_pool: bool = False
    """Share write buffers between connections in Centrifugo's Go WebSocket library. Not used
    here: asyncio reads and writes through its own buffers."""
    write_buffer_size: int = 0
    """Write buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    write_timeout: Duration = Duration(1.0)
    """How long outgoing bytes may wait for the client to take them before the connection is
    closed; `0` means no limit."""
    message_size_limit: int = 65536
    """Largest message a client may send, in bytes; a bigger one closes the connection (1009).
    `0` means `65536`."""
    decompressed_message_size_limit: int = 0
    """Largest message after permessage-deflate decompression, in bytes, which stops compression
    bombs; `0` means ten times `message_size_limit`."""


@dataclass(frozen=True, slots=True)
class SSEConfig(Section):
    enabled: bool = False
    """Serve the bidirectional Server-Sent Events transport; its clients send later commands
    through the emulation endpoint."""
    handler_prefix: str = "/connection/sse"
    """Path of the SSE endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class HTTPStreamConfig(Section):
    enabled: bool = False
    """Serve the bidirectional HTTP-streaming transport; its clients send later commands through
    the emulation endpoint."""
    handler_prefix: str = "/connection/http_stream"
    """Path of the HTTP-streaming endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class EmulationConfig(Section):
    handler_prefix: str = "/emulation"
    """Path of the emulation endpoint, where SSE and HTTP-streaming clients post their commands;
    served whenever one of those transports is enabled."""
    max_request_body_size: int = 65536
    """Largest command request body, in bytes; `0` means `65536`."""


@dataclass(frozen=True, slots=True)
class WebTransportConfig(Section):
    enabled: bool = False
    """Serve the WebTransport (HTTP/3) transport, experimental in Centrifugo. Not implemented
    here."""
    handler_prefix: str = "/connection/webtransport"
    """Path of the WebTransport endpoint."""
    message_size_limit: int = 65536
    """Largest message a WebTransport client may send, in bytes."""


@dataclass(frozen=True, slots=True)
class UniWebSocketConfig(Section):
    enabled: bool = False
    """Serve the unidirectional WebSocket transport: the client sends only its connect command
    and then receives pushes."""
    handler_prefix: str = "/connection/uni_websocket"
    """Path of the unidirectional WebSocket endpoint."""
    compression: bool = False
    """Offer permessage-deflate compression to clients that ask for it; costs CPU for every
    message."""
    compression_min_size: int = 0
    """Messages of at most this many bytes are sent uncompressed; `0` compresses every message
    (with `compression` on)."""
    compression_level: int = 1
    """Deflate level, `1` (fastest) to `9` (smallest); a value outside `-2..9` is logged and `1`
    used."""
    read_buffer_size: int = 0
    """Read buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    use_write_buffer_pool: bool = False
    """Share write buffers between connections in Centrifugo's Go WebSocket library. Not used
    here: asyncio reads and writes through its own buffers."""
    write_buffer_size: int = 0
    """Write buffer size of Centrifugo's Go WebSocket library, in bytes. Not used here: asyncio
    reads and writes through its own buffers."""
    write_timeout: Duration = Duration(1.0)
    """How long outgoing bytes may wait for the client to take them before the connection is
    closed; `0` means no limit."""
    message_size_limit: int = 65536
    """Largest message a client may send (its connect command), in bytes; `0` means `65536`."""
    decompressed_message_size_limit: int = 0
    """Largest message after permessage-deflate decompression, in bytes; `0` means ten times
    `message_size_limit`."""
    disable_closing_handshake: bool = False
    """Close connections without sending a WebSocket close frame, as Centrifugo did before 6.5.1."""
    disable_disconnect_push: bool = False
    """Send no disconnect push before closing; the close frame already carries the same code and
    reason."""
    join_push_messages: bool = False
    """Send pushes that are ready together in one WebSocket message, separated as the client
    protocol delimits them (newlines in JSON); the client must split them."""


@dataclass(frozen=True, slots=True)
class UniSSEConfig(Section):
    enabled: bool = False
    """Serve the unidirectional Server-Sent Events transport."""
    handler_prefix: str = "/connection/uni_sse"
    """Path of the unidirectional SSE endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body (POST), in bytes; `0` means no limit."""
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)
    """Answer chosen connect errors (including a connect proxy's) with an HTTP status and body
    instead of an event stream."""


@dataclass(frozen=True, slots=True)
class UniHTTPStreamConfig(Section):
    enabled: bool = False
    """Serve the unidirectional HTTP-streaming transport."""
    handler_prefix: str = "/connection/uni_http_stream"
    """Path of the unidirectional HTTP-streaming endpoint."""
    max_request_body_size: int = 65536
    """Largest connect request body, in bytes; `0` means no limit."""
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)
    """Answer chosen connect errors (including a connect proxy's) with an HTTP status and body
    instead of a stream."""


@dataclass(frozen=True, slots=True)
class UniGRPCConfig(Section):
    enabled: bool = False
    """Serve the unidirectional gRPC transport on its own port."""
    address: str = ""
    """Interface the unidirectional gRPC server listens on; empty listens on every interface."""
    port: int = 11000
    """Port of the unidirectional gRPC server."""
    max_receive_message_size: int = 0
    """Largest message the server accepts from a client, in bytes; `0` keeps gRPC's default (4
    MiB)."""
    tls: TLSConfig = subsection(TLSConfig)
    """TLS of the unidirectional gRPC server."""


@dataclass(frozen=True, slots=True)
class AdminConfig(Section):
    enabled: bool = False
    """Serve the admin web UI and the admin API."""
    handler_prefix: str = ""
    """URL prefix of the admin web UI and its endpoints; empty serves the UI at the root path."""
    password: str = ""
    """Password that signs an operator in to the admin UI; sign-in fails while it is empty."""
    secret: str = ""
    """Key that signs the admin session tokens issued at sign-in; needed with `password`."""
    insecure: bool = False
    """Serve the admin UI and API with no sign-in at all. Only behind a firewall."""
    web_path: str = ""
    """Directory of an admin UI build to serve instead of the built-in one; empty serves the
    built-in UI."""
    web_proxy_address: str = ""
    """Address of a running admin UI development server that UI requests are proxied to, for
    working on the UI; empty proxies nothing."""
    external: bool = False
    """Serve the admin UI and API on the main port even when `http_server.internal_port` is set."""


@dataclass(frozen=True, slots=True)
class PrometheusConfig(Section):
    enabled: bool = False
    """Serve metrics in the Prometheus format, summed over the workers."""
    handler_prefix: str = "/metrics"
    """Path of the metrics endpoint."""
    instrument_http_handlers: bool = False
    """Also count HTTP requests by handler and status code; a small cost on every request."""
    recovered_publications_histogram: bool = False
    """Also record, in a histogram, how many publications each successful recovery returned."""
    native_histograms: bool = False
    """Expose histograms as Prometheus native histograms. Not implemented here
    (`prometheus_client` has none): classic buckets are served."""


@dataclass(frozen=True, slots=True)
class HealthConfig(Section):
    enabled: bool = False
    """Serve a health endpoint: `200` while the node works, `500` while its engine is
    unreachable."""
    handler_prefix: str = "/health"
    """Path of the health endpoint; empty means `/health`."""


@dataclass(frozen=True, slots=True)
class SwaggerConfig(Section):
    enabled: bool = False
    """Serve a Swagger UI describing the server HTTP API. Not served here."""
    handler_prefix: str = "/swagger"
    """Path of the Swagger UI."""


@dataclass(frozen=True, slots=True)
class DebugConfig(Section):
    enabled: bool = False
    """Serve Go's pprof profiling endpoints. They do not exist in this server."""
    handler_prefix: str = "/debug/pprof"
    """Path of the pprof endpoints."""


@dataclass(frozen=True, slots=True)
class InitConfig(Section):
    enabled: bool = False
    """Serve Centrifugo's connection init endpoint. Not implemented here."""
    handler_prefix: str = "/connection/init"
    """Path of the connection init endpoint."""


@dataclass(frozen=True, slots=True)
class OpenTelemetryConfig(Section):
    enabled: bool = False
    """Export OpenTelemetry traces. Not implemented here."""
    api: bool = False
    """Trace server API requests (HTTP and gRPC)."""
    consuming: bool = False
    """Trace the processing of messages from async consumers."""
    google_cloud_adc_auth: bool = False
    """Authenticate the trace exporter with Google Cloud Application Default Credentials, to
    export to Google Cloud without a collector."""


@dataclass(frozen=True, slots=True)
class GraphiteConfig(Section):
    enabled: bool = False
    """Send metrics to Graphite periodically. Not implemented here."""
    host: str = "localhost"
    """Host of the Graphite server."""
    port: int = 2003
    """Port of the Graphite server (plaintext protocol)."""
    prefix: str = "centrifugo"
    """Prefix of every metric name sent."""
    interval: Duration = Duration(10.0)
    """How often metrics are sent."""
    tags: bool = False
    """Send metrics in Graphite's tagged format."""


@dataclass(frozen=True, slots=True)
class UsageStatsConfig(Section):
    disabled: bool = False
    """Opt out of Centrifugo's anonymous usage statistics. This server sends none, so the key
    changes nothing."""


@dataclass(frozen=True, slots=True)
class NodeConfig(Section):
    name: str = ""
    """Human-readable node name shown in the admin UI and API `info`; empty means
    `<hostname>_<port>`. Nodes tell each other apart by a generated ID, not by this name."""
    info_metrics_aggregate_interval: Duration = Duration(60.0)
    """How often each node takes the snapshot of its metrics that API `info` (and the admin UI)
    shows."""


@dataclass(frozen=True, slots=True)
class ShutdownConfig(Section):
    timeout: Duration = Duration(30.0)
    """How long a stopping node waits for connections to close and work to finish; a worker still
    running after it (rounded to whole seconds, at least 1) is killed."""


@dataclass(frozen=True, slots=True)
class Config(Section):
    http_server: HTTPServerConfig = subsection(HTTPServerConfig)
    """Listeners: addresses, ports, TLS and the separate internal port."""
    log: LogConfig = subsection(LogConfig)
    """Log level and destination."""
    engine: EngineConfig = subsection(EngineConfig)
    """Broker and presence manager in one: `memory` or `redis`."""
    broker: BrokerConfig = subsection(BrokerConfig)
    """A broker set apart from the engine: PUB/SUB, history and the idempotency cache."""
    presence_manager: PresenceManagerConfig = subsection(PresenceManagerConfig)
    """A presence manager set apart from the engine."""
    client: ClientConfig = subsection(ClientConfig)
    """Client connections: authentication and tokens, origins, limits, pings and the connect and
    refresh proxies."""
    channel: ChannelConfig = subsection(ChannelConfig)
    """Channels: options of channels without a namespace, the namespaces, and channel proxies."""
    rpc: RpcConfig = subsection(RpcConfig)
    """Client RPC calls: the RPC proxy and RPC namespaces."""
    proxies: tuple[NamedProxyConfig, ...] = ()
    """Named proxies (HTTP or gRPC endpoints of your backend) that namespaces and RPC refer to by
    name."""
    http_api: HttpAPIConfig = subsection(HttpAPIConfig)
    """The server HTTP API: path, key, error mode and port."""
    grpc_api: GrpcAPIConfig = subsection(GrpcAPIConfig)
    """The server API over gRPC: port, key, TLS and reflection."""
    # Async consumers (kafka, postgresql, ...) are not implemented; kept as plain dicts so
    # configs that declare them still load. Each item has at least "name".
    consumers: tuple[dict[str, Any], ...] = field(default=(), hash=False, metadata={"named": True})
    """Async consumers that take API commands from queues (Kafka, a PostgreSQL outbox and
    others). Not implemented here; each item is kept as a plain object."""
    websocket: WebSocketConfig = subsection(WebSocketConfig)
    """The bidirectional WebSocket transport, on by default."""
    sse: SSEConfig = subsection(SSEConfig)
    """The bidirectional Server-Sent Events transport (with the emulation endpoint)."""
    http_stream: HTTPStreamConfig = subsection(HTTPStreamConfig)
    """The bidirectional HTTP-streaming transport (with the emulation endpoint)."""
    webtransport: WebTransportConfig = subsection(WebTransportConfig)
    """The WebTransport transport. Not implemented here."""
    uni_sse: UniSSEConfig = subsection(UniSSEConfig)
    """The unidirectional Server-Sent Events transport."""
    uni_http_stream: UniHTTPStreamConfig = subsection(UniHTTPStreamConfig)
    """The unidirectional HTTP-streaming transport."""
    uni_websocket: UniWebSocketConfig = subsection(UniWebSocketConfig)
    """The unidirectional WebSocket transport."""
    uni_grpc: UniGRPCConfig = subsection(UniGRPCConfig)
    """The unidirectional gRPC transport."""
    emulation: EmulationConfig = subsection(EmulationConfig)
    """The endpoint through which bidirectional SSE and HTTP-streaming clients send commands."""
    admin: AdminConfig = subsection(AdminConfig)
    """The admin web UI and admin API."""
    prometheus: PrometheusConfig = subsection(PrometheusConfig)
    """The Prometheus metrics endpoint."""
    health: HealthConfig = subsection(HealthConfig)
    """The health check endpoint."""
    swagger: SwaggerConfig = subsection(SwaggerConfig)
    """The Swagger UI of the server HTTP API (not served here)."""
    debug: DebugConfig = subsection(DebugConfig)
    """Go's pprof endpoints (they do not exist here)."""
    init: InitConfig = subsection(InitConfig)
    """Centrifugo's connection init endpoint (not implemented here)."""
    opentelemetry: OpenTelemetryConfig = subsection(OpenTelemetryConfig)
    """OpenTelemetry tracing (not implemented here)."""
    graphite: GraphiteConfig = subsection(GraphiteConfig)
    """Graphite metrics export (not implemented here)."""
    usage_stats: UsageStatsConfig = subsection(UsageStatsConfig)
    """Centrifugo's anonymous usage statistics (this server sends none)."""
    node: NodeConfig = subsection(NodeConfig)
    """This node's name and metrics snapshot interval."""
    shutdown: ShutdownConfig = subsection(ShutdownConfig)
    """Graceful shutdown."""
    # [6.8+] map subscriptions and shared poll.
    map_broker: MapBrokerConfig = subsection(MapBrokerConfig)
    """Where map channels (namespaces with subscription type `map`) keep their state."""
    shared_poll: SharedPollConfig = subsection(SharedPollConfig)
    """Signing keys and concurrency of shared poll subscriptions."""
    # Not implemented (reported by app/config/support.py when set): kept opaque.
    controller: dict[str, Any] = empty_map()
    """Centrifugo's controller for cross-node communication. Not implemented here (workers and
    nodes talk through the broker); kept as a plain object."""
    pid_file: str = ""
    """File the process ID of the server's master process is written to; empty writes none."""
    enable_unreleased_features: bool = False
    """Turn on Centrifugo's unreleased, unstable features. This server has none."""
    # Not config keys: the merged nested dict and the namespace index.
    raw: dict[str, Any] = field(
        default_factory=dict, compare=False, repr=False, metadata={"internal": True}
    )
    """The loaded configuration rendered back as a nested dict, durations as Go strings. Not a
    config key."""
    _namespaces_by_name: dict[str, ChannelOptions] = field(
        default_factory=dict, init=False, compare=False, repr=False, metadata={"internal": True}
    )
    """Options of each namespace by name, `""` for `channel.without_namespace`, built after
    loading. Not a config key."""

    def __post_init__(self) -> None:
        index = {ns.name: ns for ns in self.channel.namespaces}
        index[""] = self.channel.without_namespace
        object.__setattr__(self, "_namespaces_by_name", index)

    def namespace(self, name: str) -> ChannelOptions | None:
        """Options of namespace ``name``; ``""`` gives ``channel.without_namespace``."""
        return self._namespaces_by_name.get(name)
