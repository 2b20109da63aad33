"""Centrifugo v6 configuration: file + ``CENTRIFUGO_*`` env + flags into frozen dataclasses.

The dataclass tree below *is* the schema: attribute paths equal Centrifugo v6 key paths
(``cfg.client.token.hmac_secret_key``), and the loader walks the same classes to know every
key, its type, its environment variable name and its default. Priority: flags > env > file >
defaults. Durations are float seconds in Python and Go duration strings ("25s") on disk.

Nothing here does I/O after ``load_config`` returns; the result is immutable and cheap to read
on hot paths (slots, no properties except ``ChannelOptions.history_enabled``).
"""

import json
import logging
import math
import os
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from functools import cache
from typing import Any, NewType

import yaml

from app.config_support import Finding, findings
from app.goregex import compile_channel_regex

__all__ = [
    "ConfigError",
    "Config",
    "ChannelOptions",
    "Duration",
    "load_config",
    "load_config_report",
    "LoadReport",
    "default_config_dict",
    "parse_duration",
    "format_duration",
    "default_env",
    "known_env_vars",
    "known_flag_keys",
    "flag_kind",
]

logger = logging.getLogger("centrifugo.config")

# Type markers the loader recognises; at runtime they are plain float / int.
Duration = NewType("Duration", float)  # seconds; Go duration string on disk
UnixTime = NewType("UnixTime", int)  # unix seconds; int or RFC 3339 string on disk


class ConfigError(Exception):
    """Invalid configuration; the message names the offending key."""


class _Section:
    """Lets every config object also be read like a mapping (``cfg.engine.redis["address"]``)."""

    __slots__ = ()

    def keys(self) -> list[str]:
        return list(_public_names(type(self)))

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-dict form with Go duration strings (what a config file would hold)."""
        return _render(self, item=True)


@cache
def _public_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if not f.metadata.get("internal"))


def _section(cls: type) -> Any:
    return field(default_factory=cls)


def _empty_map() -> Any:
    # Left out of __hash__ (dicts are unhashable) but still compared by ==.
    return field(default_factory=dict, hash=False)


def _objects() -> Any:
    return field(default=(), hash=False)


# --------------------------------------------------------------------------------------------
# Schema: small shared pieces


@dataclass(frozen=True, slots=True)
class TLSConfig(_Section):
    enabled: bool = False
    cert_pem: str = ""
    key_pem: str = ""
    server_ca_pem: str = ""
    client_ca_pem: str = ""
    insecure_skip_verify: bool = False
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class TLSAutocertConfig(_Section):
    enabled: bool = False
    host_whitelist: tuple[str, ...] = ()
    cache_dir: str = ""
    email: str = ""
    server_name: str = ""
    http: bool = False
    http_addr: str = ":80"


@dataclass(frozen=True, slots=True)
class EnabledConfig(_Section):
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class ProxyHTTPConfig(_Section):
    tls: TLSConfig = _section(TLSConfig)
    static_headers: dict[str, str] = _empty_map()
    # [{status_code, to_error{code,message,temporary}, to_disconnect{code,reason}}]
    status_to_code_transforms: tuple[dict[str, Any], ...] = _objects()


@dataclass(frozen=True, slots=True)
class ProxyGRPCConfig(_Section):
    tls: TLSConfig = _section(TLSConfig)
    credentials_key: str = ""
    credentials_value: str = ""
    compression: bool = False
    static_metadata: dict[str, str] = _empty_map()


@dataclass(frozen=True, slots=True)
class ProxyConfig(_Section):
    endpoint: str = ""
    timeout: Duration = Duration(1.0)
    http_headers: tuple[str, ...] = ()
    grpc_metadata: tuple[str, ...] = ()
    emulated_headers: tuple[str, ...] = ()
    binary_encoding: bool = False
    include_connection_meta: bool = False
    http: ProxyHTTPConfig = _section(ProxyHTTPConfig)
    grpc: ProxyGRPCConfig = _section(ProxyGRPCConfig)


@dataclass(frozen=True, slots=True)
class NamedProxyConfig(ProxyConfig):
    name: str = ""


@dataclass(frozen=True, slots=True)
class EnabledProxyConfig(ProxyConfig):
    enabled: bool = False


# --------------------------------------------------------------------------------------------
# Top-level sections


@dataclass(frozen=True, slots=True)
class HTTPServerConfig(_Section):
    address: str = ""
    port: int = 8000
    internal_address: str = ""
    internal_port: int = 0
    tls: TLSConfig = _section(TLSConfig)
    tls_autocert: TLSAutocertConfig = _section(TLSAutocertConfig)
    tls_external: bool = False
    internal_tls: TLSConfig = _section(TLSConfig)
    http3: EnabledConfig = _section(EnabledConfig)
    h2c_external: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig(_Section):
    level: str = "info"
    file: str = ""


@dataclass(frozen=True, slots=True)
class RedisConfig(_Section):
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
    tls: TLSConfig = _section(TLSConfig)
    sentinel_address: tuple[str, ...] = ()
    sentinel_user: str = ""
    sentinel_password: str = ""
    sentinel_master_name: str = ""
    sentinel_client_name: str = ""
    sentinel_tls: TLSConfig = _section(TLSConfig)
    history_use_lists: bool = False
    replica_client: EnabledConfig = _section(EnabledConfig)
    presence_ttl: Duration = Duration(60.0)
    presence_hash_field_ttl: bool = False
    presence_user_mapping: bool = False


@dataclass(frozen=True, slots=True)
class EngineConfig(_Section):
    type: str = "memory"
    redis: RedisConfig = _section(RedisConfig)


@dataclass(frozen=True, slots=True)
class NatsRawModeConfig(_Section):
    enabled: bool = False
    channel_replacements: dict[str, str] = _empty_map()
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class NatsConfig(_Section):
    url: str = "nats://localhost:4222"
    prefix: str = "centrifugo"
    dial_timeout: Duration = Duration(1.0)
    write_timeout: Duration = Duration(1.0)
    tls: TLSConfig = _section(TLSConfig)
    allow_wildcards: bool = False
    raw_mode: NatsRawModeConfig = _section(NatsRawModeConfig)


@dataclass(frozen=True, slots=True)
class BrokerConfig(_Section):
    enabled: bool = False
    type: str = "memory"
    redis: RedisConfig = _section(RedisConfig)
    nats: NatsConfig = _section(NatsConfig)
    # Not implemented (reported by app/config_support.py when set): kept opaque.
    redisnats: dict[str, Any] = _empty_map()
    postgres: dict[str, Any] = _empty_map()


@dataclass(frozen=True, slots=True)
class PresenceManagerConfig(_Section):
    enabled: bool = False
    type: str = "memory"
    redis: RedisConfig = _section(RedisConfig)


@dataclass(frozen=True, slots=True)
class TokenConfig(_Section):
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
class ClientProxyConfig(_Section):
    connect: EnabledProxyConfig = _section(EnabledProxyConfig)
    refresh: EnabledProxyConfig = _section(EnabledProxyConfig)


@dataclass(frozen=True, slots=True)
class PersonalChannelConfig(_Section):
    enabled: bool = False
    personal_channel_namespace: str = ""
    single_connection: bool = False


@dataclass(frozen=True, slots=True)
class CodeTransformsConfig(_Section):
    enabled: bool = False
    # [{code, to{code, reason}}] (client) / [{code, to{status_code, body}}] (uni_sse, uni_http_stream)
    transforms: tuple[dict[str, Any], ...] = _objects()


@dataclass(frozen=True, slots=True)
class ClientConfig(_Section):
    proxy: ClientProxyConfig = _section(ClientProxyConfig)
    allowed_origins: tuple[str, ...] = ()
    token: TokenConfig = _section(TokenConfig)
    subscription_token: SubscriptionTokenConfig = _section(SubscriptionTokenConfig)
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
    subscribe_to_user_personal_channel: PersonalChannelConfig = _section(PersonalChannelConfig)
    connect_code_to_unidirectional_disconnect: CodeTransformsConfig = _section(CodeTransformsConfig)


@dataclass(frozen=True, slots=True)
class ChannelOptions(_Section):
    """Options of ``channel.without_namespace`` and of each ``channel.namespaces[]`` item."""

    name: str = ""
    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: Duration = Duration(0.0)
    # 0 in the file means "inherit channel.history_meta_ttl"; resolved at load time.
    history_meta_ttl: Duration = Duration(0.0)
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    force_recovery_mode: str = "stream"
    auto_cache_recover: bool = False
    allowed_delta_types: tuple[str, ...] = ()
    delta_publish: bool = False
    allow_tags_filter: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    # "" in the file means "inherit channel.publication_data_format"; resolved at load time.
    publication_data_format: str = ""
    subscribe_proxy_enabled: bool = False
    subscribe_proxy_name: str = "default"
    publish_proxy_enabled: bool = False
    publish_proxy_name: str = "default"
    sub_refresh_proxy_enabled: bool = False
    sub_refresh_proxy_name: str = "default"
    subscribe_stream_proxy_enabled: bool = False
    subscribe_stream_proxy_name: str = "default"
    subscribe_stream_proxy_bidirectional: bool = False
    # [6.8+] subscription types: a subscribe of another type is refused (103); map and
    # shared poll subscriptions themselves are not implemented.
    subscription_type: str = ""
    map: dict[str, Any] = _empty_map()
    shared_poll: dict[str, Any] = _empty_map()
    map_clients_presence_channel_prefix: str = ""
    map_users_presence_channel_prefix: str = ""

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


@dataclass(frozen=True, slots=True)
class ChannelProxyConfig(_Section):
    subscribe: ProxyConfig = _section(ProxyConfig)
    publish: ProxyConfig = _section(ProxyConfig)
    sub_refresh: ProxyConfig = _section(ProxyConfig)
    subscribe_stream: ProxyConfig = _section(ProxyConfig)
    map_publish: ProxyConfig = _section(ProxyConfig)
    map_remove: ProxyConfig = _section(ProxyConfig)
    shared_poll_refresh: ProxyConfig = _section(ProxyConfig)


@dataclass(frozen=True, slots=True)
class ChannelConfig(_Section):
    proxy: ChannelProxyConfig = _section(ChannelProxyConfig)
    without_namespace: ChannelOptions = _section(ChannelOptions)
    namespaces: tuple[ChannelOptions, ...] = ()
    history_meta_ttl: Duration = Duration(720 * 3600.0)
    publication_data_format: str = ""
    max_length: int = 255
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","


@dataclass(frozen=True, slots=True)
class RpcOptions(_Section):
    name: str = ""
    proxy_enabled: bool = False
    proxy_name: str = "default"


@dataclass(frozen=True, slots=True)
class RpcPingConfig(_Section):
    enabled: bool = False
    method: str = "ping"


@dataclass(frozen=True, slots=True)
class RpcConfig(_Section):
    proxy: ProxyConfig = _section(ProxyConfig)
    without_namespace: RpcOptions = _section(RpcOptions)
    namespaces: tuple[RpcOptions, ...] = ()
    ping: RpcPingConfig = _section(RpcPingConfig)
    namespace_boundary: str = ":"


@dataclass(frozen=True, slots=True)
class HttpAPIConfig(_Section):
    disabled: bool = False
    handler_prefix: str = "/api"
    key: str = ""
    error_mode: str = ""
    external: bool = False
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class GrpcAPIConfig(_Section):
    enabled: bool = False
    error_mode: str = ""
    address: str = ""
    port: int = 10000
    key: str = ""
    tls: TLSConfig = _section(TLSConfig)
    reflection: bool = False
    max_receive_message_size: int = 0


@dataclass(frozen=True, slots=True)
class WebSocketConfig(_Section):
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
class SSEConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/sse"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class HTTPStreamConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/http_stream"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class EmulationConfig(_Section):
    handler_prefix: str = "/emulation"
    max_request_body_size: int = 65536


@dataclass(frozen=True, slots=True)
class WebTransportConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/webtransport"
    message_size_limit: int = 65536


@dataclass(frozen=True, slots=True)
class UniWebSocketConfig(_Section):
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
class UniSSEConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/uni_sse"
    max_request_body_size: int = 65536
    connect_code_to_http_response: CodeTransformsConfig = _section(CodeTransformsConfig)


@dataclass(frozen=True, slots=True)
class UniHTTPStreamConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/uni_http_stream"
    max_request_body_size: int = 65536
    connect_code_to_http_response: CodeTransformsConfig = _section(CodeTransformsConfig)


@dataclass(frozen=True, slots=True)
class UniGRPCConfig(_Section):
    enabled: bool = False
    address: str = ""
    port: int = 11000
    max_receive_message_size: int = 0
    tls: TLSConfig = _section(TLSConfig)


@dataclass(frozen=True, slots=True)
class AdminConfig(_Section):
    enabled: bool = False
    handler_prefix: str = ""
    password: str = ""
    secret: str = ""
    insecure: bool = False
    web_path: str = ""
    web_proxy_address: str = ""
    external: bool = False


@dataclass(frozen=True, slots=True)
class PrometheusConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/metrics"
    instrument_http_handlers: bool = False
    recovered_publications_histogram: bool = False
    native_histograms: bool = False


@dataclass(frozen=True, slots=True)
class HealthConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/health"


@dataclass(frozen=True, slots=True)
class SwaggerConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/swagger"


@dataclass(frozen=True, slots=True)
class DebugConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/debug/pprof"


@dataclass(frozen=True, slots=True)
class InitConfig(_Section):
    enabled: bool = False
    handler_prefix: str = "/connection/init"


@dataclass(frozen=True, slots=True)
class OpenTelemetryConfig(_Section):
    enabled: bool = False
    api: bool = False
    consuming: bool = False
    google_cloud_adc_auth: bool = False


@dataclass(frozen=True, slots=True)
class GraphiteConfig(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = 2003
    prefix: str = "centrifugo"
    interval: Duration = Duration(10.0)
    tags: bool = False


@dataclass(frozen=True, slots=True)
class UsageStatsConfig(_Section):
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class NodeConfig(_Section):
    name: str = ""
    info_metrics_aggregate_interval: Duration = Duration(60.0)


@dataclass(frozen=True, slots=True)
class ShutdownConfig(_Section):
    timeout: Duration = Duration(30.0)


@dataclass(frozen=True, slots=True)
class Config(_Section):
    http_server: HTTPServerConfig = _section(HTTPServerConfig)
    log: LogConfig = _section(LogConfig)
    engine: EngineConfig = _section(EngineConfig)
    broker: BrokerConfig = _section(BrokerConfig)
    presence_manager: PresenceManagerConfig = _section(PresenceManagerConfig)
    client: ClientConfig = _section(ClientConfig)
    channel: ChannelConfig = _section(ChannelConfig)
    rpc: RpcConfig = _section(RpcConfig)
    proxies: tuple[NamedProxyConfig, ...] = ()
    http_api: HttpAPIConfig = _section(HttpAPIConfig)
    grpc_api: GrpcAPIConfig = _section(GrpcAPIConfig)
    # Async consumers (kafka, postgresql, ...) are not implemented; kept as plain dicts so
    # configs that declare them still load. Each item has at least "name".
    consumers: tuple[dict[str, Any], ...] = field(default=(), hash=False, metadata={"named": True})
    websocket: WebSocketConfig = _section(WebSocketConfig)
    sse: SSEConfig = _section(SSEConfig)
    http_stream: HTTPStreamConfig = _section(HTTPStreamConfig)
    webtransport: WebTransportConfig = _section(WebTransportConfig)
    uni_sse: UniSSEConfig = _section(UniSSEConfig)
    uni_http_stream: UniHTTPStreamConfig = _section(UniHTTPStreamConfig)
    uni_websocket: UniWebSocketConfig = _section(UniWebSocketConfig)
    uni_grpc: UniGRPCConfig = _section(UniGRPCConfig)
    emulation: EmulationConfig = _section(EmulationConfig)
    admin: AdminConfig = _section(AdminConfig)
    prometheus: PrometheusConfig = _section(PrometheusConfig)
    health: HealthConfig = _section(HealthConfig)
    swagger: SwaggerConfig = _section(SwaggerConfig)
    debug: DebugConfig = _section(DebugConfig)
    init: InitConfig = _section(InitConfig)
    opentelemetry: OpenTelemetryConfig = _section(OpenTelemetryConfig)
    graphite: GraphiteConfig = _section(GraphiteConfig)
    usage_stats: UsageStatsConfig = _section(UsageStatsConfig)
    node: NodeConfig = _section(NodeConfig)
    shutdown: ShutdownConfig = _section(ShutdownConfig)
    # [6.8+] experimental sections: accepted as opaque objects, not implemented.
    map_broker: dict[str, Any] = _empty_map()
    controller: dict[str, Any] = _empty_map()
    shared_poll: dict[str, Any] = _empty_map()
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


# --------------------------------------------------------------------------------------------
# Schema introspection


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    # bool int float str duration unixtime strlist strmap map objlist section seclist
    kind: str
    cls: Any = None  # dataclass of a section / list item
    named: bool = False  # list items are identified by their "name" (per-item env overrides)


# Classes whose "name" key exists only as a list item (not in channel.without_namespace).
_NAMED_ITEM_CLASSES = (ChannelOptions, RpcOptions)


@cache
def _schema(cls: type, item: bool) -> dict[str, _Field]:
    hints = typing.get_type_hints(cls)
    out: dict[str, _Field] = {}
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.name == "name" and not item and cls in _NAMED_ITEM_CLASSES:
            continue
        out[f.name] = _field_for(f.name, hints[f.name], bool(f.metadata.get("named")))
    return out


def _field_for(name: str, hint: Any, named: bool) -> _Field:
    simple = {bool: "bool", int: "int", float: "float", str: "str"}
    if hint is Duration:
        return _Field(name, "duration")
    if hint is UnixTime:
        return _Field(name, "unixtime")
    if hint in simple:
        return _Field(name, simple[hint])
    origin = typing.get_origin(hint)
    if origin is tuple:
        arg = typing.get_args(hint)[0]
        if arg is str:
            return _Field(name, "strlist")
        if is_dataclass(arg):
            return _Field(name, "seclist", arg, named="name" in {f.name for f in fields(arg)})
        return _Field(name, "objlist", named=named)
    if origin is dict:
        if typing.get_args(hint) == (str, str):
            return _Field(name, "strmap")
        return _Field(name, "map")
    if is_dataclass(hint):
        return _Field(name, "section", hint)
    raise TypeError(f"unsupported config field type for {name}: {hint!r}")


@cache
def _leaves(cls: type = Config, item: bool = False) -> dict[str, tuple[tuple[str, ...], _Field]]:
    """Every settable key of ``cls``: dotted path -> (path tuple, field)."""
    out: dict[str, tuple[tuple[str, ...], _Field]] = {}

    def walk(c: type, it: bool, prefix: tuple[str, ...]) -> None:
        for f in _schema(c, it).values():
            path = prefix + (f.name,)
            if f.kind == "section":
                walk(f.cls, False, path)
            else:
                out[".".join(path)] = (path, f)

    walk(cls, item, ())
    return out


def _env_name(path: tuple[str, ...] | str) -> str:
    parts = path.split(".") if isinstance(path, str) else path
    return "_".join(parts).upper()


@cache
def _env_index(cls: type = Config, item: bool = False) -> dict[str, tuple[tuple[str, ...], _Field]]:
    # The key -> env mapping is not invertible by string splitting (keys contain "_"), so we
    # index every known leaf by its env name instead.
    return {_env_name(path): (path, f) for path, f in _leaves(cls, item).values()}


def known_env_vars() -> list[str]:
    """All top-level ``CENTRIFUGO_*`` variable names (per-item overrides not included)."""
    return sorted("CENTRIFUGO_" + name for name in _env_index())


def known_flag_keys() -> list[str]:
    """All dotted key paths a flag may set."""
    return sorted(_leaves())


def flag_kind(key: str) -> str | None:
    """Value kind of a dotted key ("bool", "int", "duration", ...), None when unknown."""
    entry = _leaves().get(key)
    return entry[1].kind if entry else None


# --------------------------------------------------------------------------------------------
# Durations


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str | int | float) -> float:
    """Go duration string ("500ms", "1m30s", "720h") or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("duration must be finite")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        number = float(text)  # bare number: seconds (Go itself only accepts "0" here)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"invalid duration {value!r}")
        return number
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"invalid duration {value!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {value!r}")
    return sign * total


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if frac == 0:
        return str(whole)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_duration(seconds: float) -> str:
    """Seconds -> Go ``time.Duration.String()`` form ("25s", "1m30s", "720h0m0s", "500ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        text = f"{ns}ns"
    elif ns < 1_000_000:
        text = _fraction(ns, 1_000) + "µs"
    elif ns < 1_000_000_000:
        text = _fraction(ns, 1_000_000) + "ms"
    else:
        hours, rest = divmod(ns, 3600 * 10**9)
        minutes, rest = divmod(rest, 60 * 10**9)
        secs = _fraction(rest, 10**9) + "s"
        if hours:
            text = f"{hours}h{minutes}m{secs}"
        elif minutes:
            text = f"{minutes}m{secs}"
        else:
            text = secs
    return sign + text


# --------------------------------------------------------------------------------------------
# Value coercion


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_VAR_RE = re.compile(r"\$\{(CENTRIFUGO_VAR_[^}]+)}")


class _Invalid(Exception):
    pass


def _parse_bool(text: str) -> bool:
    # Go strconv.ParseBool semantics.
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid(f"{text!r} is not a boolean")


def _expand_vars(mapping: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in mapping.items():
        for name in _VAR_RE.findall(value):
            if name not in env:
                raise _Invalid(f"environment variable {name!r} not found")
        out[key] = _VAR_RE.sub(lambda m: env[m.group(1)], value)
    return out


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise _Invalid(f"malformed JSON: {e}") from None


def _type_name(value: Any) -> str:
    return type(value).__name__


class _Loader:
    """One load: collects unknown keys and converts raw values into normalized dicts.

    A normalized dict holds only keys that were set, with Python values (durations as float
    seconds, lists as lists); sections nest as dicts, list items as dicts.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.unknown: list[str] = []

    # ---- scalar and composite values

    def coerce(self, f: _Field, value: Any, path: str, from_string: bool) -> Any:
        try:
            if from_string:
                return self._from_string(f, value, path)
            return self._from_value(f, value, path)
        except _Invalid as e:
            raise ConfigError(f"invalid value for {path}: {e}") from None

    def _from_string(self, f: _Field, text: str, path: str) -> Any:
        kind = f.kind
        if kind == "bool":
            return _parse_bool(text.strip())
        if kind in ("int", "unixtime", "float", "duration"):
            return self._from_value(f, text, path)
        if kind == "str":
            return text
        if kind == "strlist":
            return text.split()
        if kind == "seclist":
            text = text.strip()
            if text.startswith("["):
                return self._from_value(f, _json(text), path)
            # Centrifugo also accepts space-separated item names here.
            return [{"name": name} for name in text.split()]
        if kind in ("strmap", "map", "objlist"):
            return self._from_value(f, _json(text), path)
        raise _Invalid("cannot be set from a string")

    def _from_value(self, f: _Field, value: Any, path: str) -> Any:
        kind = f.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value.strip())
            raise _Invalid(f"expected a boolean, got {value!r}")
        if kind == "int":
            return self._int(value)
        if kind == "unixtime":
            if isinstance(value, str) and value.strip() and not _is_number(value):
                try:
                    return int(datetime.fromisoformat(value.strip()).timestamp())
                except ValueError:
                    raise _Invalid(
                        f"expected unix seconds or RFC 3339 time, got {value!r}"
                    ) from None
            return self._int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise _Invalid(f"expected a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise _Invalid(f"expected a number, got {value!r}") from None
        if kind == "duration":
            try:
                return parse_duration(value)
            except ValueError as e:
                raise _Invalid(str(e)) from None
        if kind == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise _Invalid(f"expected a string, got {_type_name(value)}")
        if kind == "strlist":
            if isinstance(value, str):
                return [value] if value else []
            if not isinstance(value, list | tuple):
                raise _Invalid(f"expected a list of strings, got {_type_name(value)}")
            out = []
            for v in value:
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    raise _Invalid(f"expected a list of strings, got item {v!r}")
                out.append(str(v))
            return out
        if kind == "strmap":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected an object of strings, got {_type_name(value)}")
            mapping = {}
            for k, v in value.items():
                if not isinstance(v, str):
                    raise _Invalid(f"expected string value for key {k!r}, got {_type_name(v)}")
                mapping[str(k)] = v
            return _expand_vars(mapping, self.env)
        if kind == "map":
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected an object, got {_type_name(value)}")
            return dict(value)
        if kind == "objlist":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, Mapping) for v in value
            ):
                raise _Invalid("expected a list of objects")
            return [dict(v) for v in value]
        if kind == "seclist":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, list | tuple):
                raise _Invalid(f"expected a list of objects, got {_type_name(value)}")
            return [
                self.section(f.cls, item, f"{path}[{i}]", item=True) for i, item in enumerate(value)
            ]
        if kind == "section":
            return self.section(f.cls, value, path, item=False)
        raise _Invalid(f"unsupported kind {kind}")  # pragma: no cover - schema bug

    @staticmethod
    def _int(value: Any) -> int:
        if isinstance(value, bool):
            raise _Invalid(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            if text == "":
                return 0
            try:
                return int(text)
            except ValueError:
                pass
        raise _Invalid(f"expected an integer, got {value!r}")

    # ---- sections

    def section(self, cls: type, data: Any, path: str, item: bool) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"invalid value for {path or 'configuration'}: expected an object, "
                f"got {_type_name(data)}"
            )
        schema = _schema(cls, item)
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = str(key)
            sub = f"{path}.{key}" if path else key
            f = schema.get(key)
            if f is None:
                self.unknown.append(sub)
                continue
            if value is None:  # e.g. an empty YAML key: treat as unset
                continue
            out[key] = self.coerce(f, value, sub, from_string=False)
        return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _merge(cls: type, item: bool, base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Override ``base`` with ``over``; sections merge key by key, everything else replaces."""
    schema = _schema(cls, item)
    out = dict(base)
    for key, value in over.items():
        f = schema[key]
        if f.kind == "section" and key in out:
            out[key] = _merge(f.cls, False, out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def _name_for_env(name: str) -> str:
    return name.replace(".", "_").replace("-", "_").upper()


# Kubernetes injects <SERVICE>_PORT / <SERVICE>_SERVICE_* variables; Centrifugo does not warn
# about them when unknown and neither do we.
_K8S_ENV_RE = re.compile(r"^CENTRIFUGO(?:_[A-Z0-9_]+)?_(PORT|SERVICE_)")

# Top-level named lists that accept CENTRIFUGO_<LIST>_<ITEM NAME>_<OPTION> overrides.
_NAMED_LISTS: tuple[tuple[str, ...], ...] = (
    ("channel", "namespaces"),
    ("rpc", "namespaces"),
    ("proxies",),
    ("consumers",),
)


def _get_path(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _apply_item_overrides(
    loader: _Loader, merged: dict[str, Any], pending: dict[str, str]
) -> list[str]:
    """Apply CENTRIFUGO_<LIST>_<NAME>_<OPTION> variables to existing list items.

    Returns the variables that matched no item/option.
    """
    unmatched = []
    for env_key, text in sorted(pending.items()):
        applied = False
        for list_path in _NAMED_LISTS:
            prefix = "CENTRIFUGO_" + _env_name(list_path) + "_"
            if not env_key.startswith(prefix):
                continue
            rest = env_key[len(prefix) :]
            f = _leaves()[".".join(list_path)][1]
            items = _get_path(merged, list_path)
            if not items:
                continue
            # Longest item name first so that "chat_private" wins over "chat".
            candidates = sorted(enumerate(items), key=lambda p: -len(str(p[1].get("name", ""))))
            for index, item in candidates:
                name_key = _name_for_env(str(item.get("name", "")))
                if not name_key or not rest.startswith(name_key + "_"):
                    continue
                option = rest[len(name_key) + 1 :]
                path = f"{'.'.join(list_path)}[{item.get('name')}]"
                if f.kind == "seclist":
                    entry = _env_index(f.cls, True).get(option)
                    if entry is None:
                        continue
                    opt_path, opt_field = entry
                    value = loader.coerce(
                        opt_field, text, f"{path}.{'.'.join(opt_path)}", from_string=True
                    )
                    patch: dict[str, Any] = {}
                    _set_path(patch, opt_path, value)
                    new_item = _merge(f.cls, True, item, patch)
                else:
                    # Opaque items (consumers): top-level option only, JSON when it parses.
                    try:
                        value = json.loads(text)
                    except ValueError:
                        value = text
                    new_item = dict(item, **{option.lower(): value})
                new_items = list(items)
                new_items[index] = new_item
                _set_path(merged, list_path, new_items)
                applied = True
                break
            if applied:
                break
        if not applied:
            unmatched.append(env_key)
    return unmatched


# --------------------------------------------------------------------------------------------
# Building and rendering


def _build(cls: type, data: dict[str, Any], item: bool) -> Any:
    kwargs: dict[str, Any] = {}
    for name, f in _schema(cls, item).items():
        if name not in data:
            continue
        value = data[name]
        if f.kind == "section":
            kwargs[name] = _build(f.cls, value, False)
        elif f.kind == "seclist":
            kwargs[name] = tuple(_build(f.cls, v, True) for v in value)
        elif f.kind in ("strlist", "objlist"):
            kwargs[name] = tuple(value)
        elif f.kind == "duration":
            kwargs[name] = Duration(float(value))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _render(obj: Any, item: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, f in _schema(type(obj), item).items():
        value = getattr(obj, name)
        if f.kind == "section":
            out[name] = _render(value, False)
        elif f.kind == "seclist":
            out[name] = [_render(v, True) for v in value]
        elif f.kind == "duration":
            out[name] = format_duration(value)
        elif f.kind == "strlist":
            out[name] = list(value)
        elif f.kind == "objlist":
            out[name] = [dict(v) for v in value]
        elif f.kind in ("map", "strmap"):
            out[name] = dict(value)
        else:
            out[name] = value
    return out


def _resolve(cfg: Config) -> Config:
    """Fill inherited namespace values so consumers never re-implement inheritance."""
    from dataclasses import replace

    channel = cfg.channel

    def fix(opts: ChannelOptions) -> ChannelOptions:
        changes: dict[str, Any] = {}
        if opts.history_meta_ttl == 0:
            changes["history_meta_ttl"] = channel.history_meta_ttl
        if opts.publication_data_format == "":
            changes["publication_data_format"] = channel.publication_data_format
        if opts.force_recovery_mode == "":
            changes["force_recovery_mode"] = "stream"
        return replace(opts, **changes) if changes else opts

    def fix_token(token: Any) -> Any:
        return replace(token, user_id_claim="sub") if token.user_id_claim == "" else token

    new_channel = replace(
        channel,
        without_namespace=fix(channel.without_namespace),
        namespaces=tuple(fix(ns) for ns in channel.namespaces),
    )
    client = replace(
        cfg.client,
        token=fix_token(cfg.client.token),
        subscription_token=fix_token(cfg.client.subscription_token),
    )
    return replace(cfg, channel=new_channel, client=client)


# --------------------------------------------------------------------------------------------
# Validation


_NAME_RE = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")
_CONSUMER_NAME_RE = re.compile(r"^[a-zA-Z0-9_]{2,}$")
_CLAIM_RE = re.compile(r"^[a-zA-Z_]+$")
_LOG_LEVELS = ("none", "trace", "debug", "info", "warn", "error", "fatal")
_DATA_FORMATS = ("", "json", "json_object", "binary")
_DEFAULT_PROXY = "default"


def _check_second_precision(seconds: float, key: str) -> None:
    if seconds > 0 and abs(seconds - round(seconds)) > 1e-9:
        raise ConfigError(
            f"invalid value for {key}: malformed duration {format_duration(seconds)}, "
            "sub-second precision is not supported for this key"
        )


# A namespace's subscription_type ("" is stream), as Centrifugo validates it.
_SUBSCRIPTION_TYPES = ("", "stream", "map", "map_clients", "map_users", "shared_poll")


def _validate_channel_options(
    opts: ChannelOptions, where: str, cfg: Config, proxies: set[str]
) -> None:
    _check_second_precision(opts.history_ttl, f"{where}.history_ttl")
    _check_second_precision(opts.history_meta_ttl, f"{where}.history_meta_ttl")
    if (opts.history_size > 0) != (opts.history_ttl > 0):
        raise ConfigError(
            f"{where}: both history_size and history_ttl required for history "
            f"(history_size={opts.history_size}, history_ttl={format_duration(opts.history_ttl)})"
        )
    if opts.history_size < 0 or opts.history_ttl < 0:
        raise ConfigError(f"{where}: history_size and history_ttl must not be negative")
    if opts.history_ttl > opts.history_meta_ttl:
        raise ConfigError(
            f"{where}.history_ttl ({format_duration(opts.history_ttl)}) can not be greater than "
            f"history_meta_ttl ({format_duration(opts.history_meta_ttl)})"
        )
    for flag in ("force_recovery", "allow_recovery"):
        if getattr(opts, flag) and not opts.history_enabled:
            raise ConfigError(
                f"{where}.{flag}: both history_size and history_ttl required for recovery"
            )
    if opts.force_recovery_mode not in ("stream", "cache"):
        raise ConfigError(
            f"invalid value for {where}.force_recovery_mode: {opts.force_recovery_mode!r} "
            "(must be stream or cache)"
        )
    if opts.auto_cache_recover and not (
        opts.force_recovery and opts.force_recovery_mode == "cache"
    ):
        raise ConfigError(
            f"{where}.auto_cache_recover requires force_recovery and force_recovery_mode "
            "set to cache"
        )
    if opts.subscription_type not in _SUBSCRIPTION_TYPES:
        raise ConfigError(
            f"invalid value for {where}.subscription_type: unknown {opts.subscription_type!r}"
        )
    if opts.channel_regex:
        try:
            compile_channel_regex(opts.channel_regex)
        except re.error as e:
            raise ConfigError(
                f"invalid value for {where}.channel_regex: {opts.channel_regex!r}: {e}"
            ) from None
    for dt in opts.allowed_delta_types:
        if dt != "fossil":
            raise ConfigError(f"invalid value for {where}.allowed_delta_types: unknown {dt!r}")
    if opts.publication_data_format not in _DATA_FORMATS:
        raise ConfigError(
            f"invalid value for {where}.publication_data_format: {opts.publication_data_format!r}"
        )
    if opts.subscribe_stream_proxy_enabled and (
        opts.subscribe_proxy_enabled or opts.publish_proxy_enabled or opts.sub_refresh_proxy_enabled
    ):
        raise ConfigError(
            f"{where}: can't use subscribe stream proxy together with subscribe, publish or "
            "sub refresh proxies"
        )
    for kind in ("subscribe", "publish", "sub_refresh", "subscribe_stream"):
        name = getattr(opts, f"{kind}_proxy_name")
        if name and name not in proxies:
            raise ConfigError(f"{where}.{kind}_proxy_name: proxy {name!r} not found")
        if getattr(opts, f"{kind}_proxy_enabled") and name in ("", _DEFAULT_PROXY):
            if not getattr(cfg.channel.proxy, kind).endpoint:
                raise ConfigError(
                    f"{where}.{kind}_proxy_enabled: channel.proxy.{kind}.endpoint not set"
                )


def _validate(cfg: Config) -> None:
    if cfg.log.level not in _LOG_LEVELS:
        raise ConfigError(
            f"invalid value for log.level: {cfg.log.level!r} (one of {', '.join(_LOG_LEVELS)})"
        )
    if cfg.engine.type not in ("memory", "redis"):
        raise ConfigError(
            f"invalid value for engine.type: {cfg.engine.type!r} (must be memory or redis)"
        )
    for section in ("broker", "presence_manager"):
        sub = getattr(cfg, section)
        if sub.enabled and sub.type not in ("memory", "redis"):
            raise ConfigError(
                f"invalid value for {section}.type: {sub.type!r} (centrifugo-py supports "
                "memory and redis)"
            )
    for port_key in ("port", "internal_port"):
        port = getattr(cfg.http_server, port_key)
        if not 0 <= port <= 65535:
            raise ConfigError(f"invalid value for http_server.{port_key}: {port}")
    for section in ("websocket", "uni_websocket"):
        ws = getattr(cfg, section)
        if ws.compression and not -2 <= ws.compression_level <= 9:
            # Centrifugo logs this on every connection and compresses at level 1.
            logger.warning(
                "%s.compression_level %d is not a flate level (-2..9): level 1 is used",
                section,
                ws.compression_level,
            )
        for key in ("compression_min_size", "decompressed_message_size_limit"):
            if getattr(ws, key) < 0:
                raise ConfigError(f"invalid value for {section}.{key}: must not be negative")
    if cfg.client.connection_rate_limit < 0:
        raise ConfigError("invalid value for client.connection_rate_limit: must not be negative")

    client = cfg.client
    if client.ping_interval > 0 and client.pong_timeout > 0:
        if client.pong_timeout >= client.ping_interval:
            raise ConfigError(
                "invalid value for client.pong_timeout: must be less than client.ping_interval "
                f"({format_duration(client.pong_timeout)} >= "
                f"{format_duration(client.ping_interval)})"
            )
    for key in ("token", "subscription_token"):
        claim = getattr(client, key).user_id_claim
        if claim and not _CLAIM_RE.match(claim):
            raise ConfigError(
                f"invalid value for client.{key}.user_id_claim: {claim!r} (must match ^[a-zA-Z_]+$)"
            )
    for key in ("connect", "refresh"):
        proxy = getattr(client.proxy, key)
        if proxy.enabled and not proxy.endpoint:
            raise ConfigError(f"client.proxy.{key}.endpoint not set (proxy enabled)")
    for i, t in enumerate(client.connect_code_to_unidirectional_disconnect.transforms):
        to = t.get("to") if isinstance(t.get("to"), Mapping) else {}
        if not t.get("code") or not to.get("code"):
            raise ConfigError(
                f"invalid value for client.connect_code_to_unidirectional_disconnect."
                f"transforms[{i}]: code and to.code required"
            )

    proxies = {_DEFAULT_PROXY}
    seen: set[str] = set()
    for i, p in enumerate(cfg.proxies):
        where = f"proxies[{i}]"
        if not _NAME_RE.match(p.name):
            raise ConfigError(
                f"invalid value for {where}.name: {p.name!r} (must match {_NAME_RE.pattern})"
            )
        if p.name == _DEFAULT_PROXY:
            raise ConfigError(f"invalid value for {where}.name: proxy name 'default' is reserved")
        if p.name in seen:
            raise ConfigError(f"invalid value for {where}.name: duplicate proxy name {p.name!r}")
        if not p.endpoint:
            raise ConfigError(f"{where}.endpoint not set (proxy {p.name!r})")
        seen.add(p.name)
    proxies |= seen

    _check_second_precision(cfg.channel.history_meta_ttl, "channel.history_meta_ttl")
    if cfg.channel.publication_data_format not in _DATA_FORMATS:
        raise ConfigError(
            "invalid value for channel.publication_data_format: "
            f"{cfg.channel.publication_data_format!r}"
        )
    _validate_channel_options(
        cfg.channel.without_namespace, "channel.without_namespace", cfg, proxies
    )
    names: set[str] = set()
    for ns in cfg.channel.namespaces:
        where = f"channel.namespaces[{ns.name}]"
        if not _NAME_RE.match(ns.name):
            raise ConfigError(
                f"invalid value for channel.namespaces name: {ns.name!r} "
                f"(must match {_NAME_RE.pattern})"
            )
        if ns.name in names:
            raise ConfigError(f"channel.namespaces: namespace name must be unique: {ns.name!r}")
        names.add(ns.name)
        _validate_channel_options(ns, where, cfg, proxies)

    personal = client.subscribe_to_user_personal_channel
    if personal.enabled:
        ns_name = personal.personal_channel_namespace
        if ns_name:
            target = cfg.namespace(ns_name)
            if target is None:
                raise ConfigError(
                    "invalid value for client.subscribe_to_user_personal_channel."
                    f"personal_channel_namespace: namespace {ns_name!r} not found"
                )
        else:
            target = cfg.channel.without_namespace
        if personal.single_connection and not target.presence:
            where = f"namespace {ns_name!r}" if ns_name else "channel.without_namespace"
            raise ConfigError(
                "client.subscribe_to_user_personal_channel.single_connection requires presence "
                f"enabled in {where}"
            )

    rpc_names: set[str] = set()
    for where, opts in [("rpc.without_namespace", cfg.rpc.without_namespace)] + [
        (f"rpc.namespaces[{ns.name}]", ns) for ns in cfg.rpc.namespaces
    ]:
        if where != "rpc.without_namespace":
            if not _NAME_RE.match(opts.name):
                raise ConfigError(
                    f"invalid value for rpc.namespaces name: {opts.name!r} "
                    f"(must match {_NAME_RE.pattern})"
                )
            if opts.name in rpc_names:
                raise ConfigError(f"rpc.namespaces: namespace name must be unique: {opts.name!r}")
            rpc_names.add(opts.name)
        if opts.proxy_name and opts.proxy_name not in proxies:
            raise ConfigError(f"{where}.proxy_name: proxy {opts.proxy_name!r} not found")
        if opts.proxy_enabled and opts.proxy_name in ("", _DEFAULT_PROXY):
            if not cfg.rpc.proxy.endpoint:
                raise ConfigError(f"{where}.proxy_enabled: rpc.proxy.endpoint not set")

    consumer_names: set[str] = set()
    for i, c in enumerate(cfg.consumers):
        name = str(c.get("name", ""))
        if not _CONSUMER_NAME_RE.match(name):
            raise ConfigError(
                f"invalid value for consumers[{i}].name: {name!r} "
                f"(must match {_CONSUMER_NAME_RE.pattern})"
            )
        if name in consumer_names:
            raise ConfigError(f"invalid value for consumers[{i}].name: duplicate {name!r}")
        consumer_names.add(name)


# --------------------------------------------------------------------------------------------
# Public entry points


def _read_file(path: str) -> dict[str, Any]:
    lower = path.lower()
    try:
        with open(path, "rb") as fh:
            content = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"error reading config file {path}: {e.strerror or e}") from None
    if not content.strip():
        return {}
    try:
        if lower.endswith(".json"):
            data = json.loads(content)
        elif lower.endswith((".yaml", ".yml")):
            data = yaml.safe_load(content)
        elif lower.endswith(".toml"):
            data = tomllib.loads(content.decode("utf-8"))
        else:
            raise ConfigError(
                f"unsupported config file extension: {path} (use .json, .yaml, .yml or .toml)"
            )
    except ConfigError:
        raise
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"error parsing config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"error parsing config file {path}: top level must be an object")
    return data


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load found besides the configuration: keys it did not know, and keys of
    Centrifugo's schema set to values this server does not honour (app/config_support.py)."""

    unknown_keys: tuple[str, ...] = ()
    unknown_envs: tuple[str, ...] = ()
    unsupported: tuple[Finding, ...] = ()


def load_config(
    path: str | None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Load, merge (flags > env > file > defaults), resolve and validate the configuration.

    ``env`` defaults to ``os.environ``. ``flags`` maps dotted key paths ("http_server.port") to
    values; strings are parsed by the key's type like env values. Unknown keys and unsupported
    keys are logged, one warning each; an unsupported key that is a security promise
    (`config_support.REFUSED`) raises ConfigError.
    """
    cfg, report = load_config_report(path, env, flags)
    for key in report.unknown_keys:
        logger.warning("unknown key in configuration file: %s", key)
    for env_key in report.unknown_envs:
        logger.warning("unknown environment variable: %s", env_key)
    for finding in report.unsupported:
        if finding.refused:
            raise ConfigError(finding.message())
        logger.warning("%s", finding.message())
    return cfg


def load_config_report(
    path: str | None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[Config, LoadReport]:
    """`load_config` without logging: the configuration and what the load found."""
    if env is None:
        env = os.environ
    loader = _Loader(env)

    file_data = loader.section(Config, _read_file(path), "", item=False) if path else {}

    # Environment.
    env_data: dict[str, Any] = {}
    pending: dict[str, str] = {}
    index = _env_index()
    for env_key in sorted(env):
        if not env_key.startswith("CENTRIFUGO_") or env_key.startswith("CENTRIFUGO_VAR_"):
            continue
        text = env[env_key]
        if text == "":
            continue  # empty value means unset
        entry = index.get(env_key[len("CENTRIFUGO_") :])
        if entry is None:
            pending[env_key] = text
            continue
        key_path, f = entry
        _set_path(env_data, key_path, loader.coerce(f, text, ".".join(key_path), from_string=True))
    merged = _merge(Config, False, file_data, env_data)
    unknown_envs = [
        env_key
        for env_key in _apply_item_overrides(loader, merged, pending)
        if not _K8S_ENV_RE.match(env_key)
    ]

    # Flags.
    if flags:
        flag_data: dict[str, Any] = {}
        leaves = _leaves()
        for key, value in flags.items():
            entry = leaves.get(key)
            if entry is None:
                raise ConfigError(f"unknown flag: --{key}")
            key_path, f = entry
            coerced = loader.coerce(f, value, key, from_string=isinstance(value, str))
            _set_path(flag_data, key_path, coerced)
        merged = _merge(Config, False, merged, flag_data)

    try:
        cfg = _resolve(_build(Config, merged, False))
    except TypeError as e:  # pragma: no cover - defensive: schema/data mismatch
        raise ConfigError(f"invalid configuration: {e}") from None
    _validate(cfg)
    object.__setattr__(cfg, "raw", _render(cfg, False))
    report = LoadReport(tuple(loader.unknown), tuple(unknown_envs), tuple(findings(cfg)))
    return cfg, report


def default_config_dict() -> dict[str, Any]:
    """Every key with its default, nested like a v6 config file (durations as "25s")."""
    return _render(Config(), False)


def default_env(cfg: Config | None = None) -> list[tuple[str, str]]:
    """(CENTRIFUGO_* name, shell-quoted value) for every top-level key, sorted by name.

    Values come from ``cfg`` when given, else from the defaults.
    """
    source = cfg if cfg is not None else Config()
    out = []
    for key_path, f in sorted(_leaves().values(), key=lambda kv: _env_name(kv[0])):
        value: Any = source
        for part in key_path:
            value = getattr(value, part)
        out.append(("CENTRIFUGO_" + _env_name(key_path), _env_value(f, value)))
    return out


def _env_value(f: _Field, value: Any) -> str:
    # Shell-ready like Centrifugo's `defaultenv`: strings and JSON quoted, numbers bare.
    if f.kind == "bool":
        return "true" if value else "false"
    if f.kind in ("int", "float", "unixtime"):
        return str(value)
    if f.kind == "duration":
        return format_duration(value)
    if f.kind == "strlist":
        return json.dumps(" ".join(value))
    if f.kind == "seclist":
        return json.dumps(json.dumps([_render(v, True) for v in value]))
    if f.kind in ("strmap", "map"):
        return json.dumps(json.dumps(dict(value)))
    if f.kind == "objlist":
        return json.dumps(json.dumps([dict(v) for v in value]))
    return json.dumps(value)
