"""app.config: defaults, file formats, env/flag overrides, durations, warnings, validation."""

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml

from app.config import (
    ConfigError,
    default_config_dict,
    default_env,
    format_duration,
    known_env_vars,
    load_config,
    parse_duration,
)

SAMPLE: dict[str, Any] = {
    "http_server": {"port": 9001},
    "log": {"level": "debug"},
    "client": {
        "token": {"hmac_secret_key": "secret"},
        "allowed_origins": ["http://localhost:3000"],
        "ping_interval": "20s",
        "pong_timeout": "5s",
    },
    "channel": {
        "without_namespace": {"presence": True, "allow_subscribe_for_client": True},
        "namespaces": [
            {
                "name": "chat",
                "history_size": 10,
                "history_ttl": "300s",
                "force_recovery": True,
                "allowed_delta_types": ["fossil"],
            },
            {"name": "news", "join_leave": True, "history_meta_ttl": "1h"},
        ],
    },
    "engine": {"type": "redis", "redis": {"address": ["redis://127.0.0.1:6380"]}},
}


def write(tmp_path: Path, data: dict[str, Any], ext: str = "json") -> str:
    path = tmp_path / f"config.{ext}"
    if ext == "json":
        path.write_text(json.dumps(data))
    elif ext in ("yaml", "yml"):
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(tomli_w.dumps(data))
    return str(path)


def load(tmp_path: Path, data: dict[str, Any], **kw: Any):
    kw.setdefault("env", {})
    return load_config(write(tmp_path, data), **kw)


# ---------------------------------------------------------------------------------- defaults


def test_defaults_without_file() -> None:
    cfg = load_config(None, env={})
    assert cfg.http_server.port == 8000
    assert cfg.http_server.address == ""
    assert cfg.client.ping_interval == 25.0
    assert cfg.client.pong_timeout == 8.0
    assert cfg.client.expired_close_delay == 25.0
    assert cfg.client.stale_close_delay == 10.0
    assert cfg.client.channel_limit == 128
    assert cfg.client.queue_max_size == 1048576
    assert cfg.client.presence_update_interval == 27.0
    assert cfg.client.history_max_publication_limit == 300
    assert cfg.client.token.user_id_claim == "sub"
    assert cfg.client.allowed_origins == ()
    assert cfg.channel.history_meta_ttl == 720 * 3600
    assert cfg.channel.max_length == 255
    assert (cfg.channel.private_prefix, cfg.channel.namespace_boundary) == ("$", ":")
    assert (cfg.channel.user_boundary, cfg.channel.user_separator) == ("#", ",")
    assert cfg.channel.namespaces == ()
    assert cfg.websocket.message_size_limit == 65536
    assert cfg.websocket.write_timeout == 1.0
    assert cfg.websocket.handler_prefix == "/connection/websocket"
    assert cfg.http_api.handler_prefix == "/api"
    assert cfg.health.handler_prefix == "/health"
    assert cfg.prometheus.handler_prefix == "/metrics"
    assert cfg.log.level == "info"
    assert cfg.engine.type == "memory"
    assert cfg.shutdown.timeout == 30.0
    assert cfg.rpc.ping.method == "ping"
    assert cfg.grpc_api.port == 10000
    assert cfg.uni_grpc.port == 11000


def test_namespace_lookup_and_inheritance(tmp_path: Path) -> None:
    cfg = load(tmp_path, SAMPLE)
    assert cfg.namespace("") is cfg.channel.without_namespace
    assert cfg.namespace("missing") is None
    chat = cfg.namespace("chat")
    assert chat is not None and chat.name == "chat"
    assert chat.history_size == 10 and chat.history_ttl == 300.0
    assert chat.history_enabled
    # 0 / absent history_meta_ttl inherits channel.history_meta_ttl; explicit value wins.
    assert chat.history_meta_ttl == 720 * 3600
    assert cfg.namespace("news").history_meta_ttl == 3600
    assert not cfg.namespace("news").history_enabled
    assert cfg.channel.without_namespace.force_recovery_mode == "stream"


def test_config_is_frozen_and_mapping_like(tmp_path: Path) -> None:
    cfg = load(tmp_path, SAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.client.insecure = True  # type: ignore[misc]
    assert cfg.engine.redis["address"] == ("redis://127.0.0.1:6380",)
    assert cfg.engine.redis.get("prefix") == "centrifugo"
    assert cfg.engine.redis.get("nope", 5) == 5
    assert dict(cfg.engine.redis)["io_timeout"] == 4.0
    with pytest.raises(KeyError):
        cfg.engine.redis["nope"]


def test_config_objects_are_hashable(tmp_path: Path) -> None:
    # Maps and lists of objects are left out of hashing, so options can key caches.
    data = {
        **SAMPLE,
        "proxies": [{"name": "p1", "endpoint": "http://x", "http": {"static_headers": {"a": "b"}}}],
    }
    cfg = load(tmp_path, data)
    assert hash(cfg) == hash(load(tmp_path, data))
    assert {cfg.namespace("chat"): 1}[cfg.namespace("chat")] == 1
    assert cfg.proxies[0].http.static_headers == {"a": "b"}
    assert hash(cfg.proxies[0])


# ---------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", ["json", "yaml", "yml", "toml"])
def test_each_file_format(tmp_path: Path, ext: str) -> None:
    cfg = load_config(write(tmp_path, SAMPLE, ext), env={})
    assert cfg.http_server.port == 9001
    assert cfg.log.level == "debug"
    assert cfg.client.token.hmac_secret_key == "secret"
    assert cfg.client.allowed_origins == ("http://localhost:3000",)
    assert cfg.client.ping_interval == 20.0
    assert [ns.name for ns in cfg.channel.namespaces] == ["chat", "news"]
    assert cfg.namespace("chat").allowed_delta_types == ("fossil",)
    assert cfg.channel.without_namespace.presence is True
    assert cfg.engine.type == "redis"


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert load_config(str(path), env={}).http_server.port == 8000


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("config.json", "{bad json", "error parsing config file"),
        ("config.yaml", "a: [1", "error parsing config file"),
        ("config.toml", "a = ", "error parsing config file"),
        ("config.ini", "[x]", "unsupported config file extension"),
        ("config.json", "[1, 2]", "top level must be an object"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_config(str(path), env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.json"), env={})


@pytest.mark.parametrize("ext", ["json", "yaml", "toml"])
def test_default_config_dict_round_trips(tmp_path: Path, ext: str, caplog) -> None:
    data = default_config_dict()
    assert data["client"]["ping_interval"] == "25s"
    assert data["channel"]["history_meta_ttl"] == "720h0m0s"
    assert data["websocket"]["write_timeout"] == "1s"
    assert "name" not in data["channel"]["without_namespace"]
    with caplog.at_level(logging.WARNING, logger="centrifugo.config"):
        cfg = load_config(write(tmp_path, data, ext), env={})
    assert caplog.records == []
    assert cfg.raw == load_config(None, env={}).raw


def test_raw_is_merged_nested_dict(tmp_path: Path) -> None:
    cfg = load(tmp_path, SAMPLE, flags={"http_server.port": 7000})
    assert cfg.raw["http_server"]["port"] == 7000
    assert cfg.raw["client"]["ping_interval"] == "20s"
    assert cfg.raw["channel"]["namespaces"][0]["name"] == "chat"
    assert cfg.raw["channel"]["namespaces"][0]["history_ttl"] == "5m0s"
    json.dumps(cfg.raw)  # serialisable


# ---------------------------------------------------------------------------------- env


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "from-env",
        "CENTRIFUGO_HTTP_SERVER_PORT": "9100",
        "CENTRIFUGO_CLIENT_ALLOWED_ORIGINS": "https://a.example https://b.example",
        "CENTRIFUGO_CLIENT_PING_INTERVAL": "1m30s",
        "CENTRIFUGO_ENGINE_REDIS_ADDRESS": "redis://one:6379 redis://two:6379",
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_PRESENCE": "false",
    }
    cfg = load(tmp_path, SAMPLE, env=env)
    assert cfg.client.token.hmac_secret_key == "from-env"
    assert cfg.http_server.port == 9100
    assert cfg.client.allowed_origins == ("https://a.example", "https://b.example")
    assert cfg.client.ping_interval == 90.0
    assert cfg.engine.redis.address == ("redis://one:6379", "redis://two:6379")
    assert cfg.channel.without_namespace.presence is False
    # untouched file values survive
    assert cfg.log.level == "debug"


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_env_bool_true(text: str) -> None:
    assert load_config(None, env={"CENTRIFUGO_CLIENT_INSECURE": text}).client.insecure is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_env_bool_false(text: str) -> None:
    env = {"CENTRIFUGO_CLIENT_INSECURE": text}
    assert load_config(None, env=env, flags=None).client.insecure is False


@pytest.mark.parametrize("text", ["yes", "on", "2", "tRuE"])
def test_env_bool_invalid(text: str) -> None:
    with pytest.raises(ConfigError, match="client.insecure"):
        load_config(None, env={"CENTRIFUGO_CLIENT_INSECURE": text})


def test_empty_env_value_means_unset(tmp_path: Path) -> None:
    env = {"CENTRIFUGO_HTTP_SERVER_PORT": "", "CENTRIFUGO_CLIENT_INSECURE": ""}
    cfg = load(tmp_path, SAMPLE, env=env)
    assert cfg.http_server.port == 9001
    assert cfg.client.insecure is False


def test_env_namespaces_json_and_per_item_overrides() -> None:
    env = {
        "CENTRIFUGO_CHANNEL_NAMESPACES": json.dumps(
            [
                {"name": "chat", "presence": True},
                {"name": "chat.room-1", "history_size": 5, "history_ttl": "60s"},
            ]
        ),
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_JOIN_LEAVE": "true",
        # "." and "-" in a name become "_"; the longer name must win over "chat".
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_ROOM_1_FORCE_RECOVERY": "1",
        "CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_ROOM_1_HISTORY_TTL": "120s",
    }
    cfg = load_config(None, env=env)
    chat = cfg.namespace("chat")
    room = cfg.namespace("chat.room-1")
    assert chat.presence and chat.join_leave and not chat.force_recovery
    assert room.force_recovery and not room.join_leave
    assert room.history_ttl == 120.0 and room.history_size == 5


def test_env_per_item_override_of_file_namespace(tmp_path: Path) -> None:
    env = {"CENTRIFUGO_CHANNEL_NAMESPACES_NEWS_ALLOW_PUBLISH_FOR_CLIENT": "true"}
    cfg = load(tmp_path, SAMPLE, env=env)
    assert cfg.namespace("news").allow_publish_for_client is True
    assert cfg.namespace("chat").allow_publish_for_client is False


def test_env_namespace_names_space_separated() -> None:
    cfg = load_config(None, env={"CENTRIFUGO_CHANNEL_NAMESPACES": "a1 b2"})
    assert [ns.name for ns in cfg.channel.namespaces] == ["a1", "b2"]


def test_env_rpc_namespaces_and_proxies_per_item() -> None:
    env = {
        "CENTRIFUGO_PROXIES": '[{"name": "backend", "endpoint": "http://a"}]',
        "CENTRIFUGO_PROXIES_BACKEND_ENDPOINT": "http://b",
        "CENTRIFUGO_PROXIES_BACKEND_TIMEOUT": "3s",
        "CENTRIFUGO_RPC_NAMESPACES": '[{"name": "math"}]',
        "CENTRIFUGO_RPC_NAMESPACES_MATH_PROXY_NAME": "backend",
    }
    cfg = load_config(None, env=env)
    assert cfg.proxies[0].endpoint == "http://b"
    assert cfg.proxies[0].timeout == 3.0
    assert cfg.rpc.namespaces[0].proxy_name == "backend"


def test_env_map_json_and_var_expansion() -> None:
    env = {
        "CENTRIFUGO_CHANNEL_PROXY_PUBLISH_HTTP_STATIC_HEADERS": '{"X-Auth": "${CENTRIFUGO_VAR_T}"}',
        "CENTRIFUGO_VAR_T": "tok",
    }
    cfg = load_config(None, env=env)
    assert cfg.channel.proxy.publish.http.static_headers == {"X-Auth": "tok"}


def test_file_map_var_expansion_missing_var(tmp_path: Path) -> None:
    data = {
        "client": {
            "proxy": {"connect": {"http": {"static_headers": {"a": "${CENTRIFUGO_VAR_NO}"}}}}
        }
    }
    with pytest.raises(ConfigError, match="client.proxy.connect.http.static_headers"):
        load(tmp_path, data)


def test_env_invalid_duration_names_key() -> None:
    with pytest.raises(ConfigError, match="invalid value for client.ping_interval"):
        load_config(None, env={"CENTRIFUGO_CLIENT_PING_INTERVAL": "soon"})


def test_env_names_are_unique_and_cover_examples() -> None:
    names = known_env_vars()
    assert len(names) == len(set(names))
    for expected in (
        "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY",
        "CENTRIFUGO_HTTP_SERVER_PORT",
        "CENTRIFUGO_ENGINE_TYPE",
        "CENTRIFUGO_CHANNEL_NAMESPACES",
        "CENTRIFUGO_CLIENT_SUBSCRIBE_TO_USER_PERSONAL_CHANNEL_ENABLED",
    ):
        assert expected in names


def test_default_env_lines() -> None:
    lines = dict(default_env())
    assert lines["CENTRIFUGO_CLIENT_PING_INTERVAL"] == "25s"
    assert lines["CENTRIFUGO_HTTP_SERVER_PORT"] == "8000"
    assert lines["CENTRIFUGO_LOG_LEVEL"] == '"info"'
    assert lines["CENTRIFUGO_CLIENT_INSECURE"] == "false"


# ---------------------------------------------------------------------------------- flags


def test_flags_beat_env_and_file(tmp_path: Path) -> None:
    env = {"CENTRIFUGO_HTTP_SERVER_PORT": "9100", "CENTRIFUGO_LOG_LEVEL": "error"}
    flags = {"http_server.port": "9200", "client.insecure": True, "engine.type": "memory"}
    cfg = load(tmp_path, SAMPLE, env=env, flags=flags)
    assert cfg.http_server.port == 9200
    assert cfg.client.insecure is True
    assert cfg.engine.type == "memory"
    assert cfg.log.level == "error"  # env still beats the file


def test_flag_strings_coerced_by_type() -> None:
    flags = {"client.insecure": "false", "client.ping_interval": "30s", "shutdown.timeout": "5"}
    cfg = load_config(None, env={"CENTRIFUGO_CLIENT_INSECURE": "true"}, flags=flags)
    assert cfg.client.insecure is False
    assert cfg.client.ping_interval == 30.0
    assert cfg.shutdown.timeout == 5.0


def test_unknown_flag() -> None:
    with pytest.raises(ConfigError, match="unknown flag"):
        load_config(None, env={}, flags={"client.nope": "1"})


def test_invalid_flag_value() -> None:
    with pytest.raises(ConfigError, match="invalid value for http_server.port"):
        load_config(None, env={}, flags={"http_server.port": "eighty"})


# ---------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("25s", 25.0),
        ("1m30s", 90.0),
        ("720h", 2592000.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("100us", 0.0001),
        ("0", 0.0),
        ("-1", -1.0),
        ("-1s", -1.0),
        ("30", 30.0),
        (12, 12.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "1m30", "s", "nan", True])
def test_parse_duration_invalid(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (25, "25s"),
        (90, "1m30s"),
        (60, "1m0s"),
        (720 * 3600, "720h0m0s"),
        (0.5, "500ms"),
        (1.5, "1.5s"),
        (-1, "-1s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_file_durations_numbers_are_seconds(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"client": {"ping_interval": 30, "stale_close_delay": "1500ms"}})
    assert cfg.client.ping_interval == 30.0
    assert cfg.client.stale_close_delay == 1.5


@pytest.mark.parametrize(
    "data, key",
    [
        ({"client": {"ping_interval": "abc"}}, "client.ping_interval"),
        ({"client": {"ping_interval": True}}, "client.ping_interval"),
        ({"http_server": {"port": "x"}}, "http_server.port"),
        ({"http_server": {"port": [1]}}, "http_server.port"),
        ({"client": {"insecure": "maybe"}}, "client.insecure"),
        ({"client": {"allowed_origins": {"a": 1}}}, "client.allowed_origins"),
        ({"client": "nope"}, "client"),
        ({"channel": {"namespaces": {"name": "x"}}}, "channel.namespaces"),
        ({"channel": {"namespaces": [{"name": "ok", "presence": "x"}]}}, "channel.namespaces[0]"),
    ],
)
def test_invalid_value_types(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, data)
    assert key in str(exc.value)


def test_weak_typing_of_scalars(tmp_path: Path) -> None:
    data = {"http_server": {"port": "8100", "internal_port": "9000"}, "admin": {"password": 1234}}
    cfg = load(tmp_path, data)
    assert cfg.http_server.port == 8100
    assert cfg.http_server.internal_port == 9000
    assert cfg.admin.password == "1234"


# ---------------------------------------------------------------------------------- warnings


def test_unknown_file_keys_warn(tmp_path: Path, caplog) -> None:
    data = {
        "client": {"foo": 1, "token": {"bar": 2}},
        "log_level": "debug",  # v5 flat key
        "channel": {
            "namespaces": [{"name": "ok", "baz": True}],
            "without_namespace": {"name": "x"},
        },
    }
    with caplog.at_level(logging.WARNING, logger="centrifugo.config"):
        cfg = load(tmp_path, data)
    messages = [r.getMessage() for r in caplog.records if r.name == "centrifugo.config"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    text = "\n".join(messages)
    for key in (
        "client.foo",
        "client.token.bar",
        "log_level",
        "channel.namespaces[0].baz",
        "channel.without_namespace.name",
    ):
        assert key in text
    assert cfg.log.level == "info"


def test_unknown_env_vars_warn(caplog) -> None:
    env = {
        "CENTRIFUGO_CLIENT_FOO": "1",
        "CENTRIFUGO_VAR_SECRET": "x",  # ${...} expansion source: no warning
        "CENTRIFUGO_SERVICE_HOST": "10.0.0.1",  # Kubernetes-injected: no warning
        "CENTRIFUGO_PORT": "tcp://10.0.0.1:8000",
        "CENTRIFUGO_CHANNEL_NAMESPACES_GHOST_PRESENCE": "true",  # no such namespace
        "OTHER_VAR": "1",
    }
    with caplog.at_level(logging.WARNING, logger="centrifugo.config"):
        load_config(None, env=env)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "CENTRIFUGO_CLIENT_FOO" in text
    assert "CENTRIFUGO_CHANNEL_NAMESPACES_GHOST_PRESENCE" in text
    for quiet in ("CENTRIFUGO_VAR_SECRET", "CENTRIFUGO_SERVICE_HOST", "CENTRIFUGO_PORT", "OTHER"):
        assert quiet not in text


# ---------------------------------------------------------------------------------- validation


def ns(**opts: Any) -> dict[str, Any]:
    return {"channel": {"namespaces": [{"name": "chat", **opts}]}}


@pytest.mark.parametrize(
    "data, fragment",
    [
        (ns(history_size=10), "both history_size and history_ttl"),
        (ns(history_ttl="10s"), "both history_size and history_ttl"),
        ({"channel": {"without_namespace": {"history_size": 5}}}, "channel.without_namespace"),
        (ns(force_recovery=True), "force_recovery"),
        (ns(allow_recovery=True), "allow_recovery"),
        (ns(history_size=1, history_ttl="2h", history_meta_ttl="1h"), "history_ttl"),
        (
            {
                "channel": {
                    "history_meta_ttl": "1m",
                    "namespaces": [{"name": "chat", "history_size": 1, "history_ttl": "2m"}],
                }
            },
            "history_meta_ttl",
        ),
        (ns(history_size=1, history_ttl="1500ms"), "sub-second precision"),
        (ns(channel_regex="[unclosed"), "channel_regex"),
        (ns(force_recovery_mode="latest"), "force_recovery_mode"),
        (ns(allowed_delta_types=["xdelta"]), "allowed_delta_types"),
        (ns(publication_data_format="xml"), "publication_data_format"),
        ({"channel": {"namespaces": [{"name": "a"}]}}, "channel.namespaces name"),
        ({"channel": {"namespaces": [{"name": "bad name"}]}}, "channel.namespaces name"),
        ({"channel": {"namespaces": [{"name": "dup"}, {"name": "dup"}]}}, "unique"),
        ({"client": {"ping_interval": "5s", "pong_timeout": "5s"}}, "client.pong_timeout"),
        ({"client": {"ping_interval": "5s", "pong_timeout": "10s"}}, "client.pong_timeout"),
        ({"engine": {"type": "nats"}}, "engine.type"),
        ({"log": {"level": "verbose"}}, "log.level"),
        ({"client": {"token": {"user_id_claim": "user.id"}}}, "client.token.user_id_claim"),
        (
            {"client": {"subscription_token": {"user_id_claim": "u-id"}}},
            "client.subscription_token.user_id_claim",
        ),
        (
            {
                "client": {
                    "subscribe_to_user_personal_channel": {
                        "enabled": True,
                        "personal_channel_namespace": "personal",
                    }
                }
            },
            "personal_channel_namespace",
        ),
        (
            {
                "client": {
                    "subscribe_to_user_personal_channel": {
                        "enabled": True,
                        "single_connection": True,
                    }
                }
            },
            "single_connection",
        ),
        (
            {
                "client": {
                    "subscribe_to_user_personal_channel": {
                        "enabled": True,
                        "personal_channel_namespace": "chat",
                        "single_connection": True,
                    }
                },
                **ns(),
            },
            "single_connection",
        ),
        (ns(subscribe_proxy_enabled=True), "channel.proxy.subscribe.endpoint"),
        (ns(publish_proxy_name="missing"), "publish_proxy_name"),
        ({"proxies": [{"name": "default", "endpoint": "http://x"}]}, "reserved"),
        ({"proxies": [{"name": "p1"}]}, "proxies[0].endpoint"),
        ({"client": {"proxy": {"connect": {"enabled": True}}}}, "client.proxy.connect.endpoint"),
        ({"rpc": {"namespaces": [{"name": "r1"}, {"name": "r1"}]}}, "rpc.namespaces"),
        ({"http_server": {"port": 70000}}, "http_server.port"),
    ],
)
def test_validation_errors(tmp_path: Path, data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, data)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "data",
    [
        {"client": {"ping_interval": "-1", "pong_timeout": "8s"}},
        {"client": {"ping_interval": "10s", "pong_timeout": "-1"}},
        {"client": {"ping_interval": "10s", "pong_timeout": "0"}},
        ns(history_size=1, history_ttl="30s", force_recovery=True, force_recovery_mode="cache"),
        ns(channel_regex=r"^[a-z]+$", presence=True),
        {
            "client": {
                "subscribe_to_user_personal_channel": {
                    "enabled": True,
                    "personal_channel_namespace": "chat",
                    "single_connection": True,
                }
            },
            **ns(presence=True),
        },
        {
            "proxies": [{"name": "backend", "endpoint": "http://127.0.0.1:1"}],
            **ns(subscribe_proxy_enabled=True, subscribe_proxy_name="backend"),
        },
    ],
)
def test_valid_edge_cases(tmp_path: Path, data: dict[str, Any]) -> None:
    load(tmp_path, data)
