"""The config schema of channels and RPC: ``channel`` with its namespaces' options, and ``rpc``.

Namespace classes (`ChannelOptions`, `RpcOptions`) serve both as ``without_namespace`` and as
``namespaces[]`` items; their ``name`` is a key of the items only (`item_name`).
"""

from dataclasses import dataclass

from app.config.schema_parts import ProxyConfig
from app.config.section import Duration, Section, item_name, subsection

__all__ = [
    "MAP_SUBSCRIPTION_TYPES",
    "MapOptions",
    "SharedPollOptions",
    "ChannelOptions",
    "ChannelProxyConfig",
    "ChannelConfig",
    "RpcOptions",
    "RpcPingConfig",
    "RpcConfig",
]


# The subscription types whose channels are maps (kept by the map broker).
MAP_SUBSCRIPTION_TYPES = frozenset({"map", "map_clients", "map_users"})


@dataclass(frozen=True, slots=True)
class MapOptions(Section):
    """A namespace's ``map`` section (Centrifugo's MapConfig, namespace.go): how a map channel
    is stored (mode, TTLs, stream: resolved by app/maps/options.py) and what clients may do.
    Zero values mean "centrifuge's default" (page sizes, catch-up timeout, stream size/ttl)."""

    mode: str = ""  # ephemeral | recoverable | persistent; required for map types
    key_ttl: Duration = Duration(0.0)
    stream_size: int = 0
    stream_ttl: Duration = Duration(0.0)
    meta_ttl: Duration = Duration(0.0)
    remove_client_on_unsubscribe: bool = False
    client_key: str = ""  # "" | client_id | user_id
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_remove_for_client: bool = False
    allow_remove_for_subscriber: bool = False
    allow_remove_for_anonymous: bool = False
    publish_proxy_enabled: bool = False
    publish_proxy_name: str = "default"
    remove_proxy_enabled: bool = False
    remove_proxy_name: str = "default"
    default_page_size: int = 0
    min_page_size: int = 0
    max_page_size: int = 0
    live_transition_max_publication_limit: int = 0
    subscribe_catch_up_timeout: Duration = Duration(0.0)


@dataclass(frozen=True, slots=True)
class SharedPollOptions(Section):
    """A namespace's ``shared_poll`` section (Centrifugo's SharedPollConfig, namespace.go)."""

    proxy_name: str = ""  # "" = the default proxy (channel.proxy.shared_poll_refresh)
    refresh_interval: Duration = Duration(0.0)
    refresh_batch_size: int = 0
    max_keys_per_connection: int = 0
    mode: str = ""  # "" (= versionless) | versionless | versioned
    channel_shutdown_delay: Duration = Duration(0.0)
    track_expired_extra_delay: Duration = Duration(0.0)
    publish_enabled: bool = False


@dataclass(frozen=True, slots=True)
class ChannelOptions(Section):
    """Options of ``channel.without_namespace`` and of each ``channel.namespaces[]`` item."""

    name: str = item_name()
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
    # [6.8+] "" and "stream" are streams; map, map_clients, map_users take `map`,
    # shared_poll takes `shared_poll`. A subscribe of another type is refused (103).
    subscription_type: str = ""
    map: MapOptions = subsection(MapOptions)
    shared_poll: SharedPollOptions = subsection(SharedPollOptions)
    map_clients_presence_channel_prefix: str = ""
    map_users_presence_channel_prefix: str = ""

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    @property
    def is_map(self) -> bool:
        """A map subscription type (map, map_clients, map_users): keyed state."""
        return self.subscription_type in MAP_SUBSCRIPTION_TYPES


@dataclass(frozen=True, slots=True)
class ChannelProxyConfig(Section):
    subscribe: ProxyConfig = subsection(ProxyConfig)
    publish: ProxyConfig = subsection(ProxyConfig)
    sub_refresh: ProxyConfig = subsection(ProxyConfig)
    subscribe_stream: ProxyConfig = subsection(ProxyConfig)
    map_publish: ProxyConfig = subsection(ProxyConfig)
    map_remove: ProxyConfig = subsection(ProxyConfig)
    shared_poll_refresh: ProxyConfig = subsection(ProxyConfig)


@dataclass(frozen=True, slots=True)
class ChannelConfig(Section):
    proxy: ChannelProxyConfig = subsection(ChannelProxyConfig)
    without_namespace: ChannelOptions = subsection(ChannelOptions)
    namespaces: tuple[ChannelOptions, ...] = ()
    history_meta_ttl: Duration = Duration(720 * 3600.0)
    publication_data_format: str = ""
    max_length: int = 255
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","


@dataclass(frozen=True, slots=True)
class RpcOptions(Section):
    name: str = item_name()
    proxy_enabled: bool = False
    proxy_name: str = "default"


@dataclass(frozen=True, slots=True)
class RpcPingConfig(Section):
    enabled: bool = False
    method: str = "ping"


@dataclass(frozen=True, slots=True)
class RpcConfig(Section):
    proxy: ProxyConfig = subsection(ProxyConfig)
    without_namespace: RpcOptions = subsection(RpcOptions)
    namespaces: tuple[RpcOptions, ...] = ()
    ping: RpcPingConfig = subsection(RpcPingConfig)
    namespace_boundary: str = ":"
