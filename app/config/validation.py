"""The rules a loaded configuration must satisfy beyond its types, as Centrifugo's validate.go
states them: names, history and recovery settings, proxies a namespace names, limits, map and
shared-poll sections. The first broken rule raises ConfigError naming the key.

A map namespace is also run through app/maps/options.py (centrifuge's resolver), so whatever
centrifuge would refuse at the first map operation refuses the start instead.
"""

import logging
import re
from collections.abc import Mapping

from app.config.durations import format_duration
from app.config.schema import Config
from app.config.schema_channel import ChannelOptions
from app.config.schema_consumers import CONSUMER_TYPES, consumer_problem
from app.config.schema_parts import ProxyConfig
from app.config.section import ConfigError
from app.goregex import compile_channel_regex
from app.maps.options import MapOptionsError, map_channel_options

__all__ = ["validate"]

logger = logging.getLogger("centrifugo.config")


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
_MAP_MODES = ("ephemeral", "recoverable", "persistent")
# broker.type values this server implements (Centrifugo's knownBrokers adds redisnats and
# postgres).
_BROKERS = ("memory", "redis", "nats", "postgres")
# consumers[].kafka.sasl_mechanism values the kafka consumer (aiokafka) speaks.
_KAFKA_SASL = ("", "plain", "scram-sha-256", "scram-sha-512")
# map_broker.type values Centrifugo knows.
_MAP_BROKERS = ("memory", "redis", "postgres")


def _proxy_problem(p: ProxyConfig) -> str:
    """Centrifugo's validateProxy for the default proxy of a kind: "" when usable."""
    if p.timeout == 0:
        return "timeout not set"
    if not p.endpoint:
        return "endpoint not set"
    return ""


def _validate_map_proxies(opts: ChannelOptions, where: str, cfg: Config, proxies: set[str]) -> None:
    m = opts.map
    for kind, enabled, name in (
        ("publish", m.publish_proxy_enabled, m.publish_proxy_name),
        ("remove", m.remove_proxy_enabled, m.remove_proxy_name),
    ):
        if name and name not in proxies:
            raise ConfigError(f'{where}: map {kind} proxy with name "{name}" not found')
        if enabled and name == _DEFAULT_PROXY:
            problem = _proxy_problem(getattr(cfg.channel.proxy, f"map_{kind}"))
            if problem:
                raise ConfigError(f"{where}: in channel.proxy.map_{kind}: {problem}")
    if m.client_key and m.client_key not in ("client_id", "user_id"):
        raise ConfigError(
            f'{where}: unknown map.client_key: "{m.client_key}" (valid: "client_id", "user_id")'
        )
    # Both decide the final key; Centrifugo refuses the pair rather than let the proxy win.
    for kind, enabled in (("publish", m.publish_proxy_enabled), ("remove", m.remove_proxy_enabled)):
        if m.client_key and enabled:
            raise ConfigError(
                f"{where}: map.client_key is not compatible with map.{kind}_proxy_enabled: "
                "the proxy is responsible for keying when enabled"
            )


def _validate_shared_poll(opts: ChannelOptions, where: str, cfg: Config, proxies: set[str]) -> None:
    sp = opts.shared_poll
    if not cfg.shared_poll.hmac_secret_key:
        raise ConfigError(
            f"{where}: shared_poll.hmac_secret_key is required when subscription_type is "
            '"shared_poll"'
        )
    if sp.proxy_name and sp.proxy_name not in proxies:
        raise ConfigError(f'{where}: shared poll proxy with name "{sp.proxy_name}" not found')
    if sp.proxy_name in ("", _DEFAULT_PROXY):
        problem = _proxy_problem(cfg.channel.proxy.shared_poll_refresh)
        if problem:
            raise ConfigError(f"{where}: in channel.proxy.shared_poll_refresh: {problem}")
    if sp.mode not in ("", "versionless", "versioned"):
        raise ConfigError(f'{where}: invalid shared_poll mode: "{sp.mode}"')
    if sp.publish_enabled and sp.mode in ("", "versionless"):
        raise ConfigError(
            f"{where}: shared_poll publish_enabled is incompatible with versionless mode "
            "(requires explicit versions)"
        )


def _validate_map_storage(opts: ChannelOptions, where: str) -> None:
    """validate.go's map.mode / TTL / stream rules, in its order and words."""
    m = opts.map
    if m.mode and m.mode not in _MAP_MODES:
        raise ConfigError(
            f'{where}: unknown map.mode: "{m.mode}" '
            '(valid: "ephemeral", "recoverable", "persistent")'
        )
    if opts.is_map and not m.mode:
        raise ConfigError(f"{where}: map.mode is required when subscription_type is a map type")
    if m.mode in ("ephemeral", "recoverable"):
        if m.key_ttl == 0:
            raise ConfigError(f'{where}: map.key_ttl is required when map.mode is "{m.mode}"')
        if m.key_ttl < 0:
            raise ConfigError(f"{where}: map.key_ttl must be positive")
    if m.mode == "persistent" and m.key_ttl != 0:
        raise ConfigError(
            f'{where}: map.key_ttl must not be set when map.mode is "persistent" '
            "(entries don't expire)"
        )
    # Presence entries are cleaned up by TTL only (map_users) or as the fallback of a failed
    # remove (map_clients): without expiry stale entries would stay for ever.
    if m.mode == "persistent" and opts.subscription_type in ("map_clients", "map_users"):
        raise ConfigError(
            f'{where}: map.mode "persistent" is not allowed with subscription_type '
            f'"{opts.subscription_type}" (presence entries require TTL-based cleanup; '
            'use "ephemeral" or "recoverable")'
        )
    if m.mode == "ephemeral":
        for key, value in (
            ("stream_size", m.stream_size),
            ("stream_ttl", m.stream_ttl),
            ("meta_ttl", m.meta_ttl),
        ):
            if (value > 0) if key == "stream_size" else (value != 0):
                raise ConfigError(f'{where}: map.{key} must be 0 for map.mode "ephemeral"')
    if m.mode in ("recoverable", "persistent"):
        for key, value in (
            ("stream_size", m.stream_size),
            ("stream_ttl", m.stream_ttl),
            ("meta_ttl", m.meta_ttl),
        ):
            if value < 0:
                raise ConfigError(f"{where}: map.{key} must be non-negative")
        if m.meta_ttl != 0:
            stream_ttl = m.stream_ttl or 60.0
            if m.meta_ttl < stream_ttl:
                raise ConfigError(
                    f"{where}: map.meta_ttl ({format_duration(m.meta_ttl)}) must be >= "
                    f"map.stream_ttl ({format_duration(stream_ttl)}) "
                    "(metadata must outlive stream)"
                )
    if m.remove_client_on_unsubscribe and not opts.is_map:
        raise ConfigError(
            f"{where}: map.remove_client_on_unsubscribe requires subscription_type to be a map type"
        )


def _presence_prefix_namespace(cfg: Config, field: str, prefix: str, expected: str) -> str:
    """Centrifugo's validatePresenceChannelPrefix: the prefix's namespace must exist and be of
    the matching map presence type; "" when it is."""
    boundary = cfg.channel.namespace_boundary
    ns_name = ""
    if boundary and boundary in prefix:
        ns_name = prefix[: prefix.index(boundary)]
    target = cfg.namespace(ns_name)
    if target is None:
        return f'{field} "{prefix}": namespace "{ns_name}" does not exist'
    if target.subscription_type != expected:
        return (
            f'{field} "{prefix}": target namespace "{ns_name}" must have '
            f'subscription_type="{expected}" (got "{target.subscription_type}")'
        )
    return ""


def _validate_map_page_sizes(opts: ChannelOptions, where: str) -> None:
    # Zero is "centrifuge's default"; any set values must keep min <= default <= max.
    m = opts.map
    for key in ("min_page_size", "max_page_size", "default_page_size"):
        if getattr(m, key) < 0:
            raise ConfigError(f"{where}: map.{key} must not be negative")
    lo, hi, default = m.min_page_size, m.max_page_size, m.default_page_size
    if lo > 0 and hi > 0 and lo > hi:
        raise ConfigError(
            f"{where}: map.min_page_size ({lo}) must not exceed map.max_page_size ({hi})"
        )
    if default > 0 and hi > 0 and default > hi:
        raise ConfigError(
            f"{where}: map.default_page_size ({default}) must not exceed map.max_page_size ({hi})"
        )
    if default > 0 and lo > 0 and default < lo:
        raise ConfigError(
            f"{where}: map.default_page_size ({default}) must not be below map.min_page_size ({lo})"
        )


def _validate_map_namespace(
    opts: ChannelOptions, where: str, cfg: Config, proxies: set[str]
) -> None:
    """validate.go's map and shared-poll part of validateChannelOptions, in its order."""
    _validate_map_proxies(opts, where, cfg, proxies)
    if opts.subscription_type == "shared_poll":
        _validate_shared_poll(opts, where, cfg, proxies)
    _validate_map_storage(opts, where)
    for field, prefix, expected in (
        (
            "map_clients_presence_channel_prefix",
            opts.map_clients_presence_channel_prefix,
            "map_clients",
        ),
        ("map_users_presence_channel_prefix", opts.map_users_presence_channel_prefix, "map_users"),
    ):
        if prefix:
            problem = _presence_prefix_namespace(cfg, field, prefix, expected)
            if problem:
                raise ConfigError(f"{where}: {problem}")
    _validate_map_page_sizes(opts, where)
    if opts.is_map:
        # What centrifuge checks beyond validate.go (meta_ttl against key_ttl, ...).
        try:
            map_channel_options(opts)
        except MapOptionsError as e:
            raise ConfigError(f"{where}: map: {e}") from None


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
    _validate_map_namespace(opts, where, cfg, proxies)
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


def _validate_presence_prefix_targets(cfg: Config) -> None:
    """validate.go's second pass over namespaces: the namespace a map presence prefix names
    (the text before the boundary, or the whole prefix + "x" when it has none) must exist."""
    boundary = cfg.channel.namespace_boundary or ":"
    for ns in cfg.channel.namespaces:
        for field in ("map_clients_presence_channel_prefix", "map_users_presence_channel_prefix"):
            prefix = getattr(ns, field)
            if not prefix:
                continue
            target = (prefix + "x").split(boundary, 1)[0]
            if target == "" or cfg.namespace(target) is None:
                raise ConfigError(
                    f'namespace {ns.name}: {field} "{prefix}" resolves to namespace "{target}" '
                    "which does not exist"
                )


# What nats-py dials (nats.go also knows these four).
_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def _validate_nats(cfg: Config) -> None:
    """broker.nats: every comma-separated url item a nats/tls/ws/wss address with a host, and a
    TLS block that loads (Centrifugo finds both out when it first connects, and exits)."""
    from urllib.parse import urlsplit

    from app.tls import ssl_context  # app.tls imports app.config

    nats = cfg.broker.nats
    for item in (nats.url or "nats://127.0.0.1:4222").split(","):
        try:
            url = urlsplit(item.strip())
            url.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ConfigError(f"invalid value for broker.nats.url: {item!r} ({e})") from None
        if url.scheme not in _NATS_SCHEMES or not url.hostname:
            raise ConfigError(
                f"invalid value for broker.nats.url: {item!r} (want nats://host:port; schemes "
                f"{', '.join(_NATS_SCHEMES)})"
            )
    try:
        ssl_context(nats.tls, "broker.nats.tls")
    except (ValueError, ConfigError) as e:
        raise ConfigError(str(e)) from None


def _validate_http3(cfg: Config) -> None:
    """What Centrifugo refuses at start (internal/app/mux.go, log.Fatal), checked with the
    config so checkconfig fails too."""
    http3 = cfg.http_server.http3.enabled
    if cfg.webtransport.enabled and not http3:
        raise ConfigError("can not enable webtransport without experimental HTTP/3")
    if not http3:
        return
    tls = cfg.http_server.tls
    if not tls.enabled:
        raise ConfigError("HTTP/3 requires TLS configured")
    if tls.client_ca_pem:
        # aioquic's server never asks for a client certificate: HTTP/3 would skip the
        # mutual TLS that HTTPS on the same port enforces.
        raise ConfigError(
            "HTTP/3 can not verify client certificates (http_server.tls.client_ca_pem)"
        )


def validate(cfg: Config) -> None:
    if cfg.log.level not in _LOG_LEVELS:
        raise ConfigError(
            f"invalid value for log.level: {cfg.log.level!r} (one of {', '.join(_LOG_LEVELS)})"
        )
    if cfg.engine.type not in ("memory", "redis"):
        raise ConfigError(
            f"invalid value for engine.type: {cfg.engine.type!r} (must be memory or redis)"
        )
    for section, known in (("broker", _BROKERS), ("presence_manager", ("memory", "redis"))):
        sub = getattr(cfg, section)
        if sub.enabled and sub.type not in known:
            raise ConfigError(
                f"invalid value for {section}.type: {sub.type!r} (centrifugo-py supports "
                f"{', '.join(known)})"
            )
    if cfg.broker.enabled and cfg.broker.type == "nats":
        _validate_nats(cfg)
    _validate_http3(cfg)
    if cfg.broker.enabled and cfg.broker.type == "postgres" and not cfg.broker.postgres.dsn:
        # Centrifugo's NewPostgresStreamBroker refuses to start the same way.
        raise ConfigError("postgres stream broker: DSN is required")
    if cfg.controller.enabled and cfg.controller.type != "postgres":
        # Centrifugo's controllers.New: postgres is the one type of its open-source server.
        raise ConfigError(
            f"invalid value for controller.type: {cfg.controller.type!r} (centrifugo-py "
            "supports postgres)"
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
        to = t.get("to")
        if not isinstance(to, Mapping):
            to = {}
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

    _validate_presence_prefix_targets(cfg)
    if cfg.map_broker.type not in _MAP_BROKERS:
        raise ConfigError(f"unknown map broker type: {cfg.map_broker.type}")
    if cfg.map_broker.type == "postgres" and not cfg.map_broker.postgres.dsn:
        # Centrifugo's NewPostgresMapBroker refuses to start the same way.
        raise ConfigError("postgres map broker: DSN is required")

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
        name = c.name
        if not _CONSUMER_NAME_RE.match(name):
            raise ConfigError(
                f"invalid value for consumers[{i}].name: {name!r} "
                f"(must match {_CONSUMER_NAME_RE.pattern})"
            )
        if name in consumer_names:
            raise ConfigError(f"invalid value for consumers[{i}].name: duplicate {name!r}")
        consumer_names.add(name)
        if c.type not in CONSUMER_TYPES:
            raise ConfigError(f"unknown consumer type: {c.type}")
        problem = consumer_problem(c) if c.enabled else None
        if problem:
            # Centrifugo: "in consumer <name> (<type>): <its Validate() message>".
            raise ConfigError(f"in consumer {name} ({c.type}): {problem}")
        kafka_sasl = c.kafka.sasl_mechanism
        if c.enabled and c.type == "kafka" and kafka_sasl not in _KAFKA_SASL:
            # Centrifugo refuses to start on a mechanism it lacks; aiokafka lacks aws-msk-iam.
            raise ConfigError(
                f"in consumer {name} (kafka): unsupported SASL mechanism: {kafka_sasl}"
            )
