"""Centrifugo v6 configuration: file + ``CENTRIFUGO_*`` env + flags into frozen dataclasses.

One concept a module:

- `section`: what a schema class is (`Section`, the mapping view) and the kind of each key,
  read from type hints (`key_specs`); `render` back to a file-shaped dict;
- `schema`, `schema_channel`, `schema_parts`: the dataclass tree, attribute paths equal to
  Centrifugo's key paths (`Config` at the top);
- `durations`: Go duration strings <-> float seconds;
- `env`: every key as a ``CENTRIFUGO_*`` variable and a flag path, and `default_env`;
- `values`: raw values (file, env, flags) coerced to each key's kind; the one JSON reader;
- `loader`: file + env + flags merged (flags > env > file > defaults), resolved, validated;
- `validation`: the rules beyond types, as Centrifugo's validate.go;
- `support`: the keys this server does not honour, reported at load and in README's table.

The names below are the public surface (``from app.config import Config, load_config``).
"""

from app.config.durations import (
    format_duration,
    parse_duration,
)
from app.config.env import (
    default_env,
    flag_kind,
    known_env_vars,
    known_flag_keys,
)
from app.config.loader import (
    LoadReport,
    default_config_dict,
    load_config,
    load_config_report,
)
from app.config.schema import (
    AdminConfig,
    BrokerConfig,
    ClientConfig,
    ClientProxyConfig,
    Config,
    DebugConfig,
    EmulationConfig,
    EngineConfig,
    GraphiteConfig,
    GrpcAPIConfig,
    HealthConfig,
    HttpAPIConfig,
    HTTPServerConfig,
    HTTPStreamConfig,
    InitConfig,
    LogConfig,
    NatsConfig,
    NatsRawModeConfig,
    NodeConfig,
    OpenTelemetryConfig,
    PersonalChannelConfig,
    PresenceManagerConfig,
    PrometheusConfig,
    RedisConfig,
    ShutdownConfig,
    SSEConfig,
    SubscriptionTokenConfig,
    SwaggerConfig,
    TokenConfig,
    UniGRPCConfig,
    UniHTTPStreamConfig,
    UniSSEConfig,
    UniWebSocketConfig,
    UsageStatsConfig,
    WebSocketConfig,
    WebTransportConfig,
)
from app.config.schema_channel import (
    ChannelConfig,
    ChannelOptions,
    ChannelProxyConfig,
    RpcConfig,
    RpcOptions,
    RpcPingConfig,
)
from app.config.schema_parts import (
    CodeTransformsConfig,
    EnabledConfig,
    EnabledProxyConfig,
    NamedProxyConfig,
    ProxyConfig,
    ProxyGRPCConfig,
    ProxyHTTPConfig,
    TLSAutocertConfig,
    TLSConfig,
)
from app.config.section import (
    ConfigError,
    Duration,
    UnixTime,
)

__all__ = [
    "ConfigError",
    "Config",
    "ChannelOptions",
    "Duration",
    "UnixTime",
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
    "HTTPServerConfig",
    "LogConfig",
    "RedisConfig",
    "EngineConfig",
    "NatsRawModeConfig",
    "NatsConfig",
    "BrokerConfig",
    "PresenceManagerConfig",
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
    "ChannelProxyConfig",
    "ChannelConfig",
    "RpcOptions",
    "RpcPingConfig",
    "RpcConfig",
    "TLSConfig",
    "TLSAutocertConfig",
    "EnabledConfig",
    "ProxyHTTPConfig",
    "ProxyGRPCConfig",
    "ProxyConfig",
    "NamedProxyConfig",
    "EnabledProxyConfig",
    "CodeTransformsConfig",
]
