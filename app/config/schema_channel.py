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

    mode: str = ""
    """How a map channel keeps its keys: `ephemeral`, `recoverable` or `persistent`. Required for
    the map subscription types."""
    key_ttl: Duration = Duration(0.0)
    """How long a key lives after its last update (e.g. `300s`); when it expires it is removed as a
    `remove` would. `0s`: keys never expire."""
    stream_size: int = 0
    """How many changes the channel's change stream keeps for subscribers catching up. `0`:
    centrifuge's default (100)."""
    stream_ttl: Duration = Duration(0.0)
    """How long the change stream is kept after its last change (e.g. `60s`). `0s`: centrifuge's
    default (60s)."""
    meta_ttl: Duration = Duration(0.0)
    """How long the stream's meta (offset and epoch) is kept; should exceed `stream_ttl`. `0s`:
    derived from the stream settings."""
    remove_client_on_unsubscribe: bool = False
    """Remove the key a client wrote (see `client_key`) when that client unsubscribes."""
    client_key: str = ""
    """Which key a client's own writes use: `client_id`, `user_id`, or empty (the client names the
    key)."""
    allow_publish_for_client: bool = False
    """Let any authenticated client write keys into channels of this namespace. Client writes bypass
    your backend."""
    allow_publish_for_subscriber: bool = False
    """Let clients subscribed to a map channel write keys into it. Client writes bypass your
    backend."""
    allow_publish_for_anonymous: bool = False
    """Let anonymous clients (empty user ID) write keys. Client writes bypass your backend."""
    allow_remove_for_client: bool = False
    """Let any authenticated client remove keys from channels of this namespace."""
    allow_remove_for_subscriber: bool = False
    """Let clients subscribed to a map channel remove keys from it."""
    allow_remove_for_anonymous: bool = False
    """Let anonymous clients remove keys."""
    publish_proxy_enabled: bool = False
    """Send client key writes to the backend (the map publish proxy), which decides instead of the
    permissions above."""
    publish_proxy_name: str = "default"
    """Which proxy handles client key writes: `default` is `channel.proxy.map_publish`, any other
    name one of `proxies`."""
    remove_proxy_enabled: bool = False
    """Send client key removals to the backend (the map remove proxy)."""
    remove_proxy_name: str = "default"
    """Which proxy handles client key removals: `default` is `channel.proxy.map_remove`, any other
    name one of `proxies`."""
    default_page_size: int = 0
    """Keys per state page when a client asks for none. `0`: centrifuge's default."""
    min_page_size: int = 0
    """Smallest page size a client may ask for. `0`: centrifuge's default."""
    max_page_size: int = 0
    """Largest page size a client may ask for. `0`: centrifuge's default."""
    live_transition_max_publication_limit: int = 0
    """Most changes a subscriber may catch up from the stream when it goes live; more and it loads
    the full state again. `0`: centrifuge's default."""
    subscribe_catch_up_timeout: Duration = Duration(0.0)
    """How long a subscriber may take to catch up with the live state before the attempt is
    abandoned (e.g. `10s`). `0s`: centrifuge's default."""


@dataclass(frozen=True, slots=True)
class SharedPollOptions(Section):
    """A namespace's ``shared_poll`` section (Centrifugo's SharedPollConfig, namespace.go)."""

    proxy_name: str = ""
    """Which proxy the refreshes call: empty or `default` is `channel.proxy.shared_poll_refresh`,
    any other name one of `proxies`."""
    refresh_interval: Duration = Duration(0.0)
    """How often the backend is asked for fresh values of the tracked keys: lower is fresher and
    costs the backend more. `0s`: centrifuge's default, `10s`."""
    refresh_batch_size: int = 0
    """How many keys one refresh request carries. `0`: centrifuge's default, 1000."""
    max_keys_per_connection: int = 0
    """How many keys one connection may track. `0`: centrifuge's default, 5000."""
    mode: str = ""
    """`versionless` (the default when empty: the server versions values by their content) or
    `versioned` (the backend's values carry versions that decide which update is newer)."""
    channel_shutdown_delay: Duration = Duration(0.0)
    """How long a channel nobody tracks keeps polling before it stops, so a quick resubscribe
    does not restart it. `0s`: centrifuge's default, `1s`; negative: at once."""
    track_expired_extra_delay: Duration = Duration(0.0)
    """Extra time a key whose tracking signature expired stays tracked before it is dropped.
    `0s`: centrifuge's default, `25s`."""
    publish_enabled: bool = False
    """Accept the server API's `shared_poll_publish` into channels of this namespace, besides the
    values polled from the backend."""


@dataclass(frozen=True, slots=True)
class ChannelOptions(Section):
    """Options of ``channel.without_namespace`` and of each ``channel.namespaces[]`` item."""

    name: str = item_name()
    """Name of the namespace: channels `<name>:...` take its options."""
    presence: bool = False
    """Keep presence (who is subscribed) for channels of this namespace. It costs storage and CPU:
    avoid on channels with very many subscribers."""
    join_leave: bool = False
    """Send join and leave messages to subscribers when clients subscribe and unsubscribe. Every
    event goes to every subscriber: avoid on channels with many subscribers."""
    force_push_join_leave: bool = False
    """Push join and leave messages to every subscriber, also those that did not ask for them when
    subscribing."""
    history_size: int = 0
    """How many publications channel history keeps. `0` turns history off. History helps recovery;
    it is not your primary storage."""
    history_ttl: Duration = Duration(0.0)
    """How long publications stay in channel history (e.g. `300s`). Keep it bounded so inactive
    channels free their history."""
    # 0 in the file means "inherit channel.history_meta_ttl"; resolved at load time.
    history_meta_ttl: Duration = Duration(0.0)
    """How long a history stream's meta (offset and epoch) is kept; should be much longer than
    `history_ttl`. `0s`: `channel.history_meta_ttl`."""
    force_positioning: bool = False
    """Check every subscriber's stream position: a publication lost between the broker and this node
    makes the client resubscribe. Needs history (`history_size`, `history_ttl`)."""
    allow_positioning: bool = False
    """Let a client ask for positioning when it subscribes. Needs history."""
    force_recovery: bool = False
    """Recover missed publications from history for every resubscribing client. Needs history."""
    allow_recovery: bool = False
    """Let a client ask for recovery when it subscribes. Needs history."""
    force_recovery_mode: str = "stream"
    """How subscribers recover: `stream` (the publications missed since their offset) or `cache`
    (only the latest publication)."""
    auto_cache_recover: bool = False
    """Recover every subscription on subscribe without the client asking; in `cache` mode each
    (re)subscribe delivers the latest publication."""
    allowed_delta_types: tuple[str, ...] = ()
    """Delta types subscribers may ask for in this namespace; `fossil` is the one there is."""
    delta_publish: bool = False
    """Publish every publication of the namespace as a delta candidate without a per-call flag;
    whether a subscriber gets a delta still depends on what it asked for."""
    allow_tags_filter: bool = False
    """Let a client pass a tags filter on subscribe so it receives only publications whose tags
    match."""
    allow_subscribe_for_client: bool = False
    """Let any authenticated client subscribe without a subscription token."""
    allow_subscribe_for_anonymous: bool = False
    """Let anonymous clients (empty user ID) subscribe without a subscription token."""
    allow_publish_for_client: bool = False
    """Let any authenticated client publish, subscribed or not. Client publications bypass your
    backend."""
    allow_publish_for_subscriber: bool = False
    """Let a client publish into channels it is subscribed to. Client publications bypass your
    backend."""
    allow_publish_for_anonymous: bool = False
    """Let anonymous clients publish. Client publications bypass your backend."""
    allow_history_for_client: bool = False
    """Let any authenticated client read history, subscribed or not. Needs history."""
    allow_history_for_subscriber: bool = False
    """Let a client read the history of channels it is subscribed to. Needs history."""
    allow_history_for_anonymous: bool = False
    """Let anonymous clients read history. Needs history."""
    allow_presence_for_client: bool = False
    """Let any authenticated client ask for presence, subscribed or not. Needs `presence`."""
    allow_presence_for_subscriber: bool = False
    """Let a client ask for the presence of channels it is subscribed to. Needs `presence`."""
    allow_presence_for_anonymous: bool = False
    """Let anonymous clients ask for presence. Needs `presence`."""
    allow_user_limited_channels: bool = False
    """Allow user-limited channels: a channel ending in `#` and comma-separated user IDs may be
    subscribed by those users only."""
    channel_regex: str = ""
    """Regular expression (Go syntax) the channel name after the namespace prefix must match. Empty:
    no check."""
    # "" in the file means "inherit channel.publication_data_format"; resolved at load time.
    publication_data_format: str = ""
    """How publication data is checked: `json` (valid JSON), `json_object` (a JSON object),
    `binary` (anything, empty too). Empty here: `channel.publication_data_format`."""
    subscribe_proxy_enabled: bool = False
    """Ask the backend (the subscribe proxy) whether a client may subscribe."""
    subscribe_proxy_name: str = "default"
    """Which proxy answers subscribes: `default` is `channel.proxy.subscribe`, any other name one of
    `proxies`."""
    publish_proxy_enabled: bool = False
    """Send client publications to the backend (the publish proxy), which may refuse or change
    them."""
    publish_proxy_name: str = "default"
    """Which proxy handles client publications: `default` is `channel.proxy.publish`, any other name
    one of `proxies`."""
    sub_refresh_proxy_enabled: bool = False
    """Ask the backend (the sub refresh proxy) to prolong subscriptions instead of a client sending
    a new subscription token."""
    sub_refresh_proxy_name: str = "default"
    """Which proxy prolongs subscriptions: `default` is `channel.proxy.sub_refresh`, any other name
    one of `proxies`."""
    subscribe_stream_proxy_enabled: bool = False
    """Stream the channel's publications from the backend (the subscribe stream proxy) instead of
    the broker."""
    subscribe_stream_proxy_name: str = "default"
    """Which proxy streams the channel: `default` is `channel.proxy.subscribe_stream`, any other
    name one of `proxies`."""
    subscribe_stream_proxy_bidirectional: bool = False
    """Let clients also send data into the subscribe stream."""
    # [6.8+] "" and "stream" are streams; map, map_clients, map_users take `map`,
    # shared_poll takes `shared_poll`. A subscribe of another type is refused (103).
    subscription_type: str = ""
    """How channels of the namespace work: `stream` (the default when empty: PUB/SUB with history),
    `map`, `map_clients`, `map_users` (keyed state, see `map`) or `shared_poll` (see `shared_poll`).
    A subscribe of another type is refused."""
    map: MapOptions = subsection(MapOptions)
    """Options of the map subscription types (`map`, `map_clients`, `map_users`)."""
    shared_poll: SharedPollOptions = subsection(SharedPollOptions)
    """Options of the `shared_poll` subscription type."""
    map_clients_presence_channel_prefix: str = ""
    """When set, client presence of a channel is kept as a map channel named this prefix plus the
    channel name."""
    map_users_presence_channel_prefix: str = ""
    """When set, user presence of a channel is kept as a map channel named this prefix plus the
    channel name."""

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
    """The subscribe proxy namespaces use under the name `default`."""
    publish: ProxyConfig = subsection(ProxyConfig)
    """The publish proxy namespaces use under the name `default`."""
    sub_refresh: ProxyConfig = subsection(ProxyConfig)
    """The sub refresh proxy namespaces use under the name `default`."""
    subscribe_stream: ProxyConfig = subsection(ProxyConfig)
    """The subscribe stream proxy namespaces use under the name `default`."""
    map_publish: ProxyConfig = subsection(ProxyConfig)
    """The map publish proxy map namespaces use under the name `default`."""
    map_remove: ProxyConfig = subsection(ProxyConfig)
    """The map remove proxy map namespaces use under the name `default`."""
    shared_poll_refresh: ProxyConfig = subsection(ProxyConfig)
    """The shared poll refresh proxy shared poll namespaces use under the name `default`."""


@dataclass(frozen=True, slots=True)
class ChannelConfig(Section):
    proxy: ChannelProxyConfig = subsection(ChannelProxyConfig)
    """The proxies of channel events that namespaces refer to as `default`."""
    without_namespace: ChannelOptions = subsection(ChannelOptions)
    """Options of channels outside any namespace (no `:` in the name)."""
    namespaces: tuple[ChannelOptions, ...] = ()
    """The channel namespaces: a channel `<name>:...` takes the options of the namespace
    `<name>`."""
    history_meta_ttl: Duration = Duration(720 * 3600.0)
    """How long a history stream's meta (offset and epoch) is kept, for namespaces that do not set
    their own. Default `720h` (30 days)."""
    publication_data_format: str = ""
    """How publication data is checked where a namespace does not say: `json` (valid JSON),
    `json_object` (a JSON object), `binary` (anything, empty too), or empty (the default: any
    data but empty data)."""
    max_length: int = 255
    """Longest channel name accepted, in characters. Default `255`."""
    private_prefix: str = "$"
    """Prefix of private channels: subscribing to one always needs a subscription token. Default
    `$`."""
    namespace_boundary: str = ":"
    """Separator between a namespace and the rest of a channel name. Default `:`."""
    user_boundary: str = "#"
    """Separator before the user IDs of a user-limited channel. Default `#`."""
    user_separator: str = ","
    """Separator between the user IDs of a user-limited channel. Default `,`."""


@dataclass(frozen=True, slots=True)
class RpcOptions(Section):
    name: str = item_name()
    """Name of the RPC namespace: methods `<name>:...` take its options."""
    proxy_enabled: bool = False
    """Send RPC calls to the backend (the RPC proxy)."""
    proxy_name: str = "default"
    """Which proxy handles RPC calls: `default` is `rpc.proxy`, any other name one of `proxies`."""


@dataclass(frozen=True, slots=True)
class RpcPingConfig(Section):
    enabled: bool = False
    """Answer the built-in RPC ping method here, without a proxy, so clients can check the
    connection."""
    method: str = "ping"
    """Name of the built-in ping method. Default `ping`."""


@dataclass(frozen=True, slots=True)
class RpcConfig(Section):
    proxy: ProxyConfig = subsection(ProxyConfig)
    """The RPC proxy RPC namespaces use under the name `default`."""
    without_namespace: RpcOptions = subsection(RpcOptions)
    """Options of RPC methods outside any RPC namespace."""
    namespaces: tuple[RpcOptions, ...] = ()
    """The RPC namespaces: a method `<name>:...` takes the options of the namespace `<name>`."""
    ping: RpcPingConfig = subsection(RpcPingConfig)
    """The built-in RPC ping method."""
    namespace_boundary: str = ":"
    """Separator between an RPC namespace and the method name. Default `:`."""
