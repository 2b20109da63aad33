"""The map and shared-poll config sections: typed like every other section (defaults, env,
flags), validated as Centrifugo's validate.go does with its words, resolved as centrifuge's
ResolveAndValidateMapChannelOptions (app/maps/options.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import ChannelOptions, ConfigError, MapOptions, load_config, load_config_report
from app.config.support import findings
from app.maps.broker import MapChannelOptions, MapMode
from app.maps.options import MapOptionsError, map_channel_options

SDK_CONFIG = Path("/tmp/sdk/js_config.json")
REFRESH_PROXY = {"channel": {"proxy": {"shared_poll_refresh": {"endpoint": "http://127.0.0.1:1"}}}}


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def with_namespaces(*namespaces: dict[str, Any], **top: Any) -> dict[str, Any]:
    channel = {**top.pop("channel", {}), "namespaces": list(namespaces)}
    return {**top, "channel": channel}


def test_defaults_are_centrifugos() -> None:
    cfg = load_config(None, env={})
    assert cfg.map_broker.type == "memory"
    redis = cfg.map_broker.redis
    assert (redis.prefix, redis.cleanup_interval, redis.cleanup_batch_size) == (
        "centrifugo",
        1.0,
        100,
    )
    assert (redis.idempotent_result_ttl, redis.skip_pub_sub) == (300.0, False)
    assert cfg.shared_poll.hmac_secret_key == "" and cfg.shared_poll.concurrency_limit == 0
    ns = cfg.channel.without_namespace
    assert ns.map == MapOptions()
    assert (ns.map.publish_proxy_name, ns.map.remove_proxy_name) == ("default", "default")
    assert ns.shared_poll.proxy_name == "" and ns.shared_poll.refresh_interval == 0


def test_env_and_flags_set_the_sections() -> None:
    env = {
        "CENTRIFUGO_MAP_BROKER_TYPE": "redis",
        "CENTRIFUGO_MAP_BROKER_REDIS_ADDRESS": "redis://127.0.0.1:6390",
        "CENTRIFUGO_MAP_BROKER_REDIS_CLEANUP_INTERVAL": "250ms",
        "CENTRIFUGO_SHARED_POLL_HMAC_SECRET_KEY": "poll",
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_MAP_MODE": "persistent",
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_SUBSCRIPTION_TYPE": "map",
    }
    cfg = load_config(None, env=env, flags={"shared_poll.concurrency_limit": "4"})
    assert cfg.map_broker.type == "redis"
    assert cfg.map_broker.redis.address == ("redis://127.0.0.1:6390",)
    assert cfg.map_broker.redis.cleanup_interval == 0.25
    assert (cfg.shared_poll.hmac_secret_key, cfg.shared_poll.concurrency_limit) == ("poll", 4)
    assert cfg.channel.without_namespace.map.mode == "persistent"


def test_per_namespace_env_override_reaches_the_map_section(tmp_path: Path) -> None:
    ns = {"name": "mm", "subscription_type": "map", "map": {"mode": "persistent"}}
    env = {"CENTRIFUGO_CHANNEL_NAMESPACES_MM_MAP_MAX_PAGE_SIZE": "50"}
    cfg = load_config(write(tmp_path, with_namespaces(ns)), env=env)
    assert cfg.namespace("mm").map.max_page_size == 50  # type: ignore[union-attr]


@pytest.mark.skipif(not SDK_CONFIG.exists(), reason="centrifuge-js test config not fetched")
def test_sdk_config_loads_with_only_true_warnings(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="centrifugo.config"):
        cfg, report = load_config_report(str(SDK_CONFIG), env={})
    assert report.unsupported == ()
    # Not a Centrifugo v6.9 key (centrifuge has the option; Centrifugo does not expose it).
    assert report.unknown_keys == ("channel.namespaces[11].client_publish_debounce_interval",)
    poll = cfg.namespace("poll")
    assert poll is not None and poll.shared_poll.mode == "versioned"
    assert poll.shared_poll.refresh_interval == 0.2
    prestest = cfg.namespace("prestest")
    assert prestest is not None and prestest.map_clients_presence_channel_prefix == "prescli:"


# (namespace, extra top-level config, Centrifugo's message)
REFUSED: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({"subscription_type": "map"}, {}, "map.mode is required when subscription_type is a map type"),
    (
        {"map": {"mode": "eternal"}},
        {},
        'unknown map.mode: "eternal" (valid: "ephemeral", "recoverable", "persistent")',
    ),
    (
        {"subscription_type": "map", "map": {"mode": "ephemeral"}},
        {},
        'map.key_ttl is required when map.mode is "ephemeral"',
    ),
    (
        {"subscription_type": "map", "map": {"mode": "persistent", "key_ttl": "10s"}},
        {},
        'map.key_ttl must not be set when map.mode is "persistent" (entries don\'t expire)',
    ),
    (
        {"subscription_type": "map_users", "map": {"mode": "persistent"}},
        {},
        'map.mode "persistent" is not allowed with subscription_type "map_users"',
    ),
    (
        {
            "subscription_type": "map",
            "map": {"mode": "ephemeral", "key_ttl": "5s", "stream_size": 3},
        },
        {},
        'map.stream_size must be 0 for map.mode "ephemeral"',
    ),
    (
        {"subscription_type": "map", "map": {"mode": "persistent", "meta_ttl": "30s"}},
        {},
        "map.meta_ttl (30s) must be >= map.stream_ttl (1m0s) (metadata must outlive stream)",
    ),
    (
        {"map": {"remove_client_on_unsubscribe": True}},
        {},
        "map.remove_client_on_unsubscribe requires subscription_type to be a map type",
    ),
    (
        {"map": {"client_key": "session"}},
        {},
        'unknown map.client_key: "session" (valid: "client_id", "user_id")',
    ),
    (
        {"map": {"max_page_size": 10, "default_page_size": 20}},
        {},
        "map.default_page_size (20) must not exceed map.max_page_size (10)",
    ),
    (
        {"map": {"publish_proxy_name": "nope"}},
        {},
        'map publish proxy with name "nope" not found',
    ),
    (
        {"map": {"remove_proxy_enabled": True}},
        {},
        "in channel.proxy.map_remove: endpoint not set",
    ),
    (
        {"subscription_type": "shared_poll"},
        REFRESH_PROXY,
        'shared_poll.hmac_secret_key is required when subscription_type is "shared_poll"',
    ),
    (
        {"subscription_type": "shared_poll"},
        {"shared_poll": {"hmac_secret_key": "k"}},
        "in channel.proxy.shared_poll_refresh: endpoint not set",
    ),
    (
        {"subscription_type": "shared_poll", "shared_poll": {"mode": "sometimes"}},
        {"shared_poll": {"hmac_secret_key": "k"}, **REFRESH_PROXY},
        'invalid shared_poll mode: "sometimes"',
    ),
    (
        {"subscription_type": "shared_poll", "shared_poll": {"publish_enabled": True}},
        {"shared_poll": {"hmac_secret_key": "k"}, **REFRESH_PROXY},
        "shared_poll publish_enabled is incompatible with versionless mode",
    ),
    (
        {"subscription_type": "shared_poll", "shared_poll": {"proxy_name": "backend"}},
        {"shared_poll": {"hmac_secret_key": "k"}},
        'shared poll proxy with name "backend" not found',
    ),
    (
        # centrifuge's resolver, beyond validate.go: the meta must outlive the keys.
        {
            "subscription_type": "map",
            "map": {"mode": "recoverable", "key_ttl": "20m", "meta_ttl": "10m"},
        },
        {},
        "map: MetaTTL must be >= KeyTTL (metadata must outlive keys)",
    ),
    (
        {"map_clients_presence_channel_prefix": "missing:"},
        {},
        'map_clients_presence_channel_prefix "missing:": namespace "missing" does not exist',
    ),
    (
        {"map_users_presence_channel_prefix": "ns:"},
        {},
        'map_users_presence_channel_prefix "ns:": target namespace "ns" must have '
        'subscription_type="map_users" (got "")',
    ),
]


@pytest.mark.parametrize(("ns", "top", "message"), REFUSED, ids=[r[2][:40] for r in REFUSED])
def test_bad_sections_fail_at_start_with_centrifugos_message(
    tmp_path: Path, ns: dict[str, Any], top: dict[str, Any], message: str
) -> None:
    data = with_namespaces({"name": "ns", **ns}, **top)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data), env={})
    assert str(e.value).startswith("channel.namespaces[ns]: ")
    assert message in str(e.value)


def test_without_namespace_is_validated_too() -> None:
    env = {"CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_SUBSCRIPTION_TYPE": "map_clients"}
    with pytest.raises(ConfigError, match=r"^channel.without_namespace: map.mode is required"):
        load_config(None, env=env)


def test_presence_prefix_without_boundary_names_no_namespace(tmp_path: Path) -> None:
    # validate.go's second pass: "pres" (no boundary) resolves to namespace "presx".
    target: dict[str, Any] = {"name": "pres", "subscription_type": "map_clients"}
    target["map"] = {"mode": "ephemeral", "key_ttl": "60s"}
    owner = {"name": "room", "map_clients_presence_channel_prefix": "pres"}
    env = {"CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_SUBSCRIPTION_TYPE": "map_clients"}
    env["CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_MAP_MODE"] = "ephemeral"
    env["CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_MAP_KEY_TTL"] = "60s"
    with pytest.raises(ConfigError, match='resolves to namespace "presx" which does not exist'):
        load_config(write(tmp_path, with_namespaces(target, owner)), env=env)


def test_presence_prefix_to_the_right_namespace_loads(tmp_path: Path) -> None:
    target: dict[str, Any] = {"name": "pres", "subscription_type": "map_users"}
    target["map"] = {"mode": "recoverable", "key_ttl": "60s"}
    owner = {"name": "room", "map_users_presence_channel_prefix": "pres:"}
    cfg = load_config(write(tmp_path, with_namespaces(target, owner)), env={})
    assert findings(cfg) == []


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("postgres", "postgres map broker: DSN is required"),
        ("etcd", "unknown map broker type: etcd"),
    ],
)
def test_map_broker_type(kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env={"CENTRIFUGO_MAP_BROKER_TYPE": kind})
    assert load_config(None, env={"CENTRIFUGO_MAP_BROKER_TYPE": "redis"}).map_broker.type == "redis"


def test_map_proxy_and_postgres_keys_are_not_reported(tmp_path: Path) -> None:
    section = {"mode": "persistent", "publish_proxy_enabled": True}
    ns = {"name": "mm", "subscription_type": "map", "map": section}
    data = with_namespaces(ns, channel={"proxy": {"map_publish": {"endpoint": "http://h:1"}}})
    data["map_broker"] = {"postgres": {"dsn": "postgres://x"}}
    _, report = load_config_report(write(tmp_path, data), env={})
    assert report.unsupported == ()


def ns_map(**m: Any) -> ChannelOptions:
    return ChannelOptions(subscription_type="map", map=MapOptions(**m))


@pytest.mark.parametrize(
    ("section", "resolved"),
    [
        ({"mode": "ephemeral", "key_ttl": 30.0}, MapChannelOptions(MapMode.EPHEMERAL, 30.0)),
        (
            {"mode": "recoverable", "key_ttl": 30.0},
            MapChannelOptions(MapMode.RECOVERABLE, 30.0, 100, 60.0, 600.0),
        ),
        (
            {"mode": "recoverable", "key_ttl": 3600.0, "stream_size": 5, "stream_ttl": 10.0},
            MapChannelOptions(MapMode.RECOVERABLE, 3600.0, 5, 10.0, 3600.0),
        ),
        ({"mode": "persistent"}, MapChannelOptions(MapMode.PERSISTENT, 0.0, 100, 60.0, 0.0)),
        (
            {"mode": "persistent", "stream_size": 2, "stream_ttl": 60.0},
            MapChannelOptions(MapMode.PERSISTENT, 0.0, 2, 60.0, 0.0),
        ),
    ],
)
def test_map_channel_options_fill_centrifuges_defaults(
    section: dict[str, Any], resolved: MapChannelOptions
) -> None:
    assert map_channel_options(ns_map(**section)) == resolved


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "map channel not configured: set Mode"),
        ({"mode": "ephemeral"}, "KeyTTL required for mode with expiry"),
        ({"mode": "ephemeral", "key_ttl": -1.0}, "KeyTTL must be positive"),
        ({"mode": "persistent", "key_ttl": 1.0}, "KeyTTL must be 0 for persistent mode"),
        ({"mode": "ephemeral", "key_ttl": 1.0, "stream_ttl": 1.0}, "StreamTTL requires"),
        ({"mode": "persistent", "meta_ttl": 600.0}, "MetaTTL must be 0 (permanent) when KeyTTL"),
        ({"mode": "persistent", "stream_size": -1}, "StreamSize must be non-negative"),
    ],
)
def test_map_channel_options_refuse_as_centrifuge(section: dict[str, Any], message: str) -> None:
    with pytest.raises(MapOptionsError) as e:
        map_channel_options(ns_map(**section))
    assert str(e.value).startswith(message)


def test_memory_map_broker_serves_one_worker_only(tmp_path: Path) -> None:
    from app.engines.build import uses_memory_map_broker
    from app.hosting.startup import MEMORY_MAP_WORKERS_ERROR, StartupError, run

    ns = {"name": "maps", "subscription_type": "map", "map": {"mode": "persistent"}}
    data = with_namespaces(ns, engine={"type": "redis"})
    cfg = load_config(write(tmp_path, data), env={})
    assert uses_memory_map_broker(cfg)
    with pytest.raises(StartupError, match=re.escape(MEMORY_MAP_WORKERS_ERROR)):
        run(cfg, 2)  # refused before anything is started
    redis_maps = load_config(write(tmp_path, {**data, "map_broker": {"type": "redis"}}), env={})
    assert not uses_memory_map_broker(redis_maps)
    # No map namespace: the default memory map broker holds nothing, any worker count is fine.
    assert not uses_memory_map_broker(load_config(None, env={"CENTRIFUGO_ENGINE_TYPE": "redis"}))


def test_postgres_map_broker_section_is_centrifugos(tmp_path: Path) -> None:
    from app.engines.build import build_map_broker
    from app.engines.postgres import PostgresMapBroker

    section = {
        "dsn": "postgres://u@127.0.0.1:1/db",
        "num_shards": 4,
        "use_notify": True,
        "table_prefix": "prod_cf_",
        "outbox": {"poll_interval": "250ms"},
        "partition_retention_days": 0,
    }
    ns = {"name": "mm", "subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "5s"}}
    data = with_namespaces(ns)
    data["map_broker"] = {"type": "postgres", "postgres": section}
    cfg, report = load_config_report(write(tmp_path, data), env={})
    pg = cfg.map_broker.postgres
    assert (pg.pool_size, pg.ttl_check_interval, pg.cleanup_interval) == (16, 1.0, 60.0)
    assert (pg.idempotent_result_ttl, pg.outbox.poll_interval, pg.outbox.batch_size) == (
        300.0,
        0.25,
        1000,
    )
    assert not report.unsupported
    broker = build_map_broker(cfg)
    assert isinstance(broker, PostgresMapBroker)
    assert broker.names.meta == "prod_cf_map_meta" and broker.num_shards == 4
    chopts = broker.options_of("mm:room")
    assert chopts is not None and not chopts.mode.has_stream
    assert broker.options_of("plain") is None and broker.options_of("nope:x") is None
