"""The rules a loaded configuration must satisfy beyond its types, as Centrifugo's validate.go
states them: names, history and recovery settings, proxies a namespace names, limits. The first
broken rule raises ConfigError naming the key.
"""

import logging
import re
from collections.abc import Mapping

from app.config.durations import format_duration
from app.config.schema import Config
from app.config.schema_channel import ChannelOptions
from app.config.section import ConfigError
from app.goregex import compile_channel_regex

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


def validate(cfg: Config) -> None:
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
