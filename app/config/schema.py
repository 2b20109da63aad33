"""Centrifugo v6 configuration schema: the top-level sections and `Config`, frozen dataclasses.

The dataclass tree *is* the schema: attribute paths equal Centrifugo v6 key paths
(``cfg.client.token.hmac_secret_key``), and the loader walks the same classes to know every
key, its type, its environment variable name and its default (app/config/section.py).
Durations are float seconds in Python and Go duration strings ("25s") on disk.

The loaded result is immutable and cheap to read on hot paths (slots, no properties except
``ChannelOptions.history_enabled`` and ``ChannelOptions.is_map``). Shared pieces live in schema_parts.py, the channel and
RPC sections in schema_channel.py.
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
    port: int = 8000
    internal_address: str = ""
    internal_port: int = 0
    tls: TLSConfig = subsection(TLSConfig)
    tls_autocert: TLSAutocertConfig = subsection(TLSAutocertConfig)
    tls_external: bool = False
    internal_tls: TLSConfig = subsection(TLSConfig)
    http3: EnabledConfig = subsection(EnabledConfig)
    h2c_external: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig(Section):
    level: str = "info"
    file: str = ""


@dataclass(frozen=True, slots=True)
class RedisConfig(Section):
    address: tuple[str, ...] = ("redis://127.0.0.1:6379",)
    prefix: str = "centrifugo"
    connect_timeout: Duration = Duration(1.0)
    io_timeout: Duration = Duration(4.0)
    db: int = 0
    user: str = ""
    password: str = ""
    client_name: str = ""
    force_resp2: bool = False
    cluster_address: tuple[str, ...] = ()
    tls: TLSConfig = subsection(TLSConfig)
    sentinel_address: tuple[str, ...] = ()
    sentinel_user: str = ""
    sentinel_password: str = ""
    sentinel_master_name: str = ""
    sentinel_client_name: str = ""
    sentinel_tls: TLSConfig = subsection(TLSConfig)
    history_use_lists: bool = False
    replica_client: EnabledConfig = subsection(EnabledConfig)
    presence_ttl: Duration = Duration(60.0)
    presence_hash_field_ttl: bool = False
    presence_user_mapping: bool = False


@dataclass(frozen=True, slots=True)
class EngineConfig(Section):
    type: str = "memory"
    redis: RedisConfig = subsection(RedisConfig)


@dataclass(frozen=True, slots=True)
class NatsRawModeConfig(Section):
    enabled: bool = False
    channel_replacements: dict[str, str] = empty_map()
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class NatsConfig(Section):
    url: str = "nats://localhost:4222"
    prefix: str = "centrifugo"
    dial_timeout: Duration = Duration(1.0)
    write_timeout: Duration = Duration(1.0)
    tls: TLSConfig = subsection(TLSConfig)
    allow_wildcards: bool = False
    raw_mode: NatsRawModeConfig = subsection(NatsRawModeConfig)


@dataclass(frozen=True, slots=True)
class BrokerConfig(Section):
    enabled: bool = False
    type: str = "memory"
    redis: RedisConfig = subsection(RedisConfig)
    nats: NatsConfig = subsection(NatsConfig)
    # Not implemented (reported by app/config/support.py when set): kept opaque.
    redisnats: dict[str, Any] = empty_map()
    postgres: dict[str, Any] = empty_map()


@dataclass(frozen=True, slots=True)
class PresenceManagerConfig(Section):
    enabled: bool = False
    type: str = "memory"
    redis: RedisConfig = subsection(RedisConfig)


@dataclass(frozen=True, slots=True)
class RedisMapBrokerConfig(RedisConfig):
    """``map_broker.redis`` (Centrifugo's RedisMapBroker): a Redis deployment of its own,
    read like every other ``redis`` section (the engine-only keys it inherits are Centrifugo's
    ``engine.redis`` extras and do nothing here), plus the map broker's own settings."""

    # How often expired keys become removal publications; -1s (negative) disables it.
    cleanup_interval: Duration = Duration(1.0)
    cleanup_batch_size: int = 100
    idempotent_result_ttl: Duration = Duration(300.0)
    skip_pub_sub: bool = False


@dataclass(frozen=True, slots=True)
class PostgresMapBrokerOutboxConfig(Section):
    """``map_broker.postgres.outbox``: how each node reads the stream table."""

    poll_interval: Duration = Duration(0.1)
    batch_size: int = 1000


@dataclass(frozen=True, slots=True)
class PostgresMapBrokerConfig(Section):
    """``map_broker.postgres`` (Centrifugo's PostgresMapBroker, engine.go; the broker is
    app/engines/postgres/). Names and defaults are Centrifugo's."""

    dsn: str = ""
    tls: TLSConfig = subsection(TLSConfig)
    pool_size: int = 16
    num_shards: int = 8
    ttl_check_interval: Duration = Duration(1.0)
    cleanup_interval: Duration = Duration(60.0)
    idempotent_result_ttl: Duration = Duration(300.0)
    binary_data: bool = False
    # Centrifugo reads it nowhere either: the stream is kept by partition_retention_days.
    stream_retention: Duration = Duration(86400.0)
    use_notify: bool = False
    notify_dsn: str = ""
    table_prefix: str = "cf"
    skip_schema_init: bool = False
    outbox: PostgresMapBrokerOutboxConfig = subsection(PostgresMapBrokerOutboxConfig)
    partition_lookahead_days: int = 2
    partition_retention_days: int = 7


@dataclass(frozen=True, slots=True)
class MapBrokerConfig(Section):
    """``map_broker`` (Centrifugo's MapBroker, engine.go): where map channels live."""

    type: str = "memory"  # memory | redis | postgres
    redis: RedisMapBrokerConfig = subsection(RedisMapBrokerConfig)
    postgres: PostgresMapBrokerConfig = subsection(PostgresMapBrokerConfig)


@dataclass(frozen=True, slots=True)
class SharedPollConfig(Section):
    """Top-level ``shared_poll`` (Centrifugo's SharedPoll, types.go): the HMAC keys that sign
    tracked items, and how many refresh calls run at once (0: no limit)."""

    hmac_secret_key: str = ""
    hmac_previous_secret_key: str = ""
    hmac_previous_secret_key_valid_until: UnixTime = UnixTime(0)
    concurrency_limit: int = 0


@dataclass(frozen=True, slots=True)
class TokenConfig(Section):
    hmac_secret_key: str = ""
    hmac_previous_secret_key: str = ""
    hmac_previous_secret_key_valid_until: UnixTime = UnixTime(0)
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    jwks_public_endpoint: str = ""
    audience: str = ""
    audience_regex: str = ""
    issuer: str = ""
    issuer_regex: str = ""
    user_id_claim: str = "sub"
    insecure_skip_jwks_endpoint_safety_check: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionTokenConfig(TokenConfig):
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class ClientProxyConfig(Section):
    connect: EnabledProxyConfig = subsection(EnabledProxyConfig)
    refresh: EnabledProxyConfig = subsection(EnabledProxyConfig)


@dataclass(frozen=True, slots=True)
class PersonalChannelConfig(Section):
    enabled: bool = False
    personal_channel_namespace: str = ""
    single_connection: bool = False


@dataclass(frozen=True, slots=True)
class ClientConfig(Section):
    proxy: ClientProxyConfig = subsection(ClientProxyConfig)
    allowed_origins: tuple[str, ...] = ()
    token: TokenConfig = subsection(TokenConfig)
    subscription_token: SubscriptionTokenConfig = subsection(SubscriptionTokenConfig)
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    ping_interval: Duration = Duration(25.0)
    pong_timeout: Duration = Duration(8.0)
    expired_close_delay: Duration = Duration(25.0)
    expired_sub_close_delay: Duration = Duration(25.0)
    stale_close_delay: Duration = Duration(10.0)
    channel_limit: int = 128
    queue_max_size: int = 1048576
    presence_update_interval: Duration = Duration(27.0)
    concurrency: int = 0
    channel_position_check_delay: Duration = Duration(40.0)
    channel_position_max_time_lag: Duration = Duration(0.0)
    connection_limit: int = 0
    user_connection_limit: int = 0
    connection_rate_limit: int = 0
    connect_include_server_time: bool = False
    history_max_publication_limit: int = 300
    recovery_max_publication_limit: int = 300
    insecure_skip_token_signature_verify: bool = False
    user_id_http_header: str = ""
    insecure: bool = False
    subscribe_to_user_personal_channel: PersonalChannelConfig = subsection(PersonalChannelConfig)
    connect_code_to_unidirectional_disconnect: CodeTransformsConfig = subsection(
        CodeTransformsConfig
    )


@dataclass(frozen=True, slots=True)
class HttpAPIConfig(Section):
    disabled: bool = False
    handler_prefix: str = "/api"
    key: str = ""
    error_mode: str = ""
    external: bool = False
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class GrpcAPIConfig(Section):
    enabled: bool = False
    error_mode: str = ""
    address: str = ""
    port: int = 10000
    key: str = ""
    tls: TLSConfig = subsection(TLSConfig)
    reflection: bool = False
    max_receive_message_size: int = 0


@dataclass(frozen=True, slots=True)
class WebSocketConfig(Section):
    disabled: bool = False
    handler_prefix: str = "/connection/websocket"
    compression: bool = False
    compression_min_size: int = 0
    compression_level: int = 1
    read_buffer_size: int = 0
    use_write_buffer_pool: bool = False
    write_buffer_size: int = 0
    write_timeout: Duration = Duration(1.0)
    message_size_limit: int = 65536
    decompressed_message_size_limit: int = 0


@dataclass(frozen=True, slots=True)
class SSEConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/sse"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class HTTPStreamConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/http_stream"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class EmulationConfig(Section):
    handler_prefix: str = "/emulation"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class WebTransportConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/webtransport"
    message_size_limit: int = 65536


@dataclass(frozen=True, slots=True)
class UniWebSocketConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/uni_websocket"
    compression: bool = False
    compression_min_size: int = 0
    compression_level: int = 1
    read_buffer_size: int = 0
    use_write_buffer_pool: bool = False
    write_buffer_size: int = 0
    write_timeout: Duration = Duration(1.0)
    message_size_limit: int = 65536
    decompressed_message_size_limit: int = 0
    disable_closing_handshake: bool = False
    disable_disconnect_push: bool = False
    join_push_messages: bool = False


@dataclass(frozen=True, slots=True)
class UniSSEConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/uni_sse"
    max_request_body_size: int = 65536
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)


@dataclass(frozen=True, slots=True)
class UniHTTPStreamConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/uni_http_stream"
    max_request_body_size: int = 65536
    connect_code_to_http_response: CodeTransformsConfig = subsection(CodeTransformsConfig)


@dataclass(frozen=True, slots=True)
class UniGRPCConfig(Section):
    enabled: bool = False
    address: str = ""
    port: int = 11000
    max_receive_message_size: int = 0
    tls: TLSConfig = subsection(TLSConfig)


@dataclass(frozen=True, slots=True)
class AdminConfig(Section):
    enabled: bool = False
    handler_prefix: str = ""
    password: str = ""
    secret: str = ""
    insecure: bool = False
    web_path: str = ""
    web_proxy_address: str = ""
    external: bool = False


@dataclass(frozen=True, slots=True)
class PrometheusConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/metrics"
    instrument_http_handlers: bool = False
    recovered_publications_histogram: bool = False
    native_histograms: bool = False


@dataclass(frozen=True, slots=True)
class HealthConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/health"


@dataclass(frozen=True, slots=True)
class SwaggerConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/swagger"


@dataclass(frozen=True, slots=True)
class DebugConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/debug/pprof"


@dataclass(frozen=True, slots=True)
class InitConfig(Section):
    enabled: bool = False
    handler_prefix: str = "/connection/init"


@dataclass(frozen=True, slots=True)
class OpenTelemetryConfig(Section):
    enabled: bool = False
    api: bool = False
    consuming: bool = False
    google_cloud_adc_auth: bool = False


@dataclass(frozen=True, slots=True)
class GraphiteConfig(Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = 2003
    prefix: str = "centrifugo"
    interval: Duration = Duration(10.0)
    tags: bool = False


@dataclass(frozen=True, slots=True)
class UsageStatsConfig(Section):
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class NodeConfig(Section):
    name: str = ""
    info_metrics_aggregate_interval: Duration = Duration(60.0)


@dataclass(frozen=True, slots=True)
class ShutdownConfig(Section):
    timeout: Duration = Duration(30.0)


@dataclass(frozen=True, slots=True)
class Config(Section):
    http_server: HTTPServerConfig = subsection(HTTPServerConfig)
    log: LogConfig = subsection(LogConfig)
    engine: EngineConfig = subsection(EngineConfig)
    broker: BrokerConfig = subsection(BrokerConfig)
    presence_manager: PresenceManagerConfig = subsection(PresenceManagerConfig)
    client: ClientConfig = subsection(ClientConfig)
    channel: ChannelConfig = subsection(ChannelConfig)
    rpc: RpcConfig = subsection(RpcConfig)
    proxies: tuple[NamedProxyConfig, ...] = ()
    http_api: HttpAPIConfig = subsection(HttpAPIConfig)
    grpc_api: GrpcAPIConfig = subsection(GrpcAPIConfig)
    # Async consumers (kafka, postgresql, ...) are not implemented; kept as plain dicts so
    # configs that declare them still load. Each item has at least "name".
    consumers: tuple[dict[str, Any], ...] = field(default=(), hash=False, metadata={"named": True})
    websocket: WebSocketConfig = subsection(WebSocketConfig)
    sse: SSEConfig = subsection(SSEConfig)
    http_stream: HTTPStreamConfig = subsection(HTTPStreamConfig)
    webtransport: WebTransportConfig = subsection(WebTransportConfig)
    uni_sse: UniSSEConfig = subsection(UniSSEConfig)
    uni_http_stream: UniHTTPStreamConfig = subsection(UniHTTPStreamConfig)
    uni_websocket: UniWebSocketConfig = subsection(UniWebSocketConfig)
    uni_grpc: UniGRPCConfig = subsection(UniGRPCConfig)
    emulation: EmulationConfig = subsection(EmulationConfig)
    admin: AdminConfig = subsection(AdminConfig)
    prometheus: PrometheusConfig = subsection(PrometheusConfig)
    health: HealthConfig = subsection(HealthConfig)
    swagger: SwaggerConfig = subsection(SwaggerConfig)
    debug: DebugConfig = subsection(DebugConfig)
    init: InitConfig = subsection(InitConfig)
    opentelemetry: OpenTelemetryConfig = subsection(OpenTelemetryConfig)
    graphite: GraphiteConfig = subsection(GraphiteConfig)
    usage_stats: UsageStatsConfig = subsection(UsageStatsConfig)
    node: NodeConfig = subsection(NodeConfig)
    shutdown: ShutdownConfig = subsection(ShutdownConfig)
    # [6.8+] map subscriptions and shared poll.
    map_broker: MapBrokerConfig = subsection(MapBrokerConfig)
    shared_poll: SharedPollConfig = subsection(SharedPollConfig)
    # Not implemented (reported by app/config/support.py when set): kept opaque.
    controller: dict[str, Any] = empty_map()
    pid_file: str = ""
    enable_unreleased_features: bool = False
    # Not config keys: the merged nested dict and the namespace index.
    raw: dict[str, Any] = field(
        default_factory=dict, compare=False, repr=False, metadata={"internal": True}
    )
    _namespaces_by_name: dict[str, ChannelOptions] = field(
        default_factory=dict, init=False, compare=False, repr=False, metadata={"internal": True}
    )

    def __post_init__(self) -> None:
        index = {ns.name: ns for ns in self.channel.namespaces}
        index[""] = self.channel.without_namespace
        object.__setattr__(self, "_namespaces_by_name", index)

    def namespace(self, name: str) -> ChannelOptions | None:
        """Options of namespace ``name``; ``""`` gives ``channel.without_namespace``."""
        return self._namespaces_by_name.get(name)
