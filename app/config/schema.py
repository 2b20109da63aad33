"""Centrifugo v6 configuration schema: the top-level sections and `Config`, frozen dataclasses.

The dataclass tree *is* the schema: attribute paths equal Centrifugo v6 key paths
(``cfg.client.token.hmac_secret_key``), and the loader walks the same classes to know every
key, its type, its environment variable name and its default (app/config/section.py).
Durations are float seconds in Python and Go duration strings ("25s") on disk.

The loaded result is immutable and cheap to read on hot paths (slots, no properties except
``ChannelOptions.history_enabled`` and ``ChannelOptions.is_map``). Shared pieces live in
schema_parts.py, the channel and RPC sections in schema_channel.py, the engine sections in
schema_engines.py, the client transports in schema_transports.py (all re-exported here).

The string under each field (an attribute docstring) is that key's description in
`centrifugo configdoc` (app/config/docs.py reads them), so reference and schema cannot drift:
a field without one fails tests/unit/test_configdoc.py. Facts come from Centrifugo's `doc`
tags and comments (internal/configtypes); where this server behaves otherwise, the text says
what it does.
"""

from dataclasses import dataclass, field
from typing import Any

from app.config.schema_channel import ChannelConfig, ChannelOptions, RpcConfig
from app.config.schema_consumers import ConsumerConfig
from app.config.schema_engines import (
    BrokerConfig,
    ControllerConfig,
    EngineConfig,
    MapBrokerConfig,
    NatsConfig,
    NatsRawModeConfig,
    PostgresMapBrokerConfig,
    PostgresMapBrokerOutboxConfig,
    PresenceManagerConfig,
    RedisConfig,
    RedisMapBrokerConfig,
)
from app.config.schema_parts import (
    CodeTransformsConfig,
    EnabledConfig,
    EnabledProxyConfig,
    NamedProxyConfig,
    TLSAutocertConfig,
    TLSConfig,
)
from app.config.schema_transports import (
    EmulationConfig,
    HTTPStreamConfig,
    SSEConfig,
    UniGRPCConfig,
    UniHTTPStreamConfig,
    UniSSEConfig,
    UniWebSocketConfig,
    WebSocketConfig,
    WebTransportConfig,
)
from app.config.section import Duration, Section, UnixTime, subsection

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
    """HTTP/3 (QUIC) on the main port's UDP twin, experimental in Centrifugo: requires `tls`;
    serves WebTransport sessions (every other HTTP/3 request gets 421, so browsers use TCP)
    and advertises itself with `Alt-Svc` on TCP responses."""
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
    consumers: tuple[ConsumerConfig, ...] = ()
    """Asynchronous consumers: server API commands (or publication data) taken from a queue (a
    PostgreSQL outbox table, Redis streams, NATS JetStream, Kafka) and run as the HTTP API runs
    them."""
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
    controller: ControllerConfig = subsection(ControllerConfig)
    """Where node-to-node control messages go when not through the broker (Centrifugo's
    custom controller, for brokers without one)."""
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
