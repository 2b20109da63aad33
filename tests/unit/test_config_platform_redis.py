"""REDIS_URL / REDIS_TLS_URL from a Heroku-style platform (app/config/platform_env.py): the
address of a Redis section in use that configures none, never more."""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path

import pytest

from app.config import load_config, load_config_report
from app.engines.redis.address import specs_from_config

URL = "rediss://:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:12345"
PLAIN = "redis://h:secret@plain.example.com:6379"


def load(env: dict[str, str], file: dict | None = None, tmp_path: Path | None = None, **flags):
    path = None
    if file is not None:
        assert tmp_path is not None
        path = tmp_path / "config.json"
        path.write_text(json.dumps(file))
    return load_config_report(str(path) if path else None, env=env, flags=flags or None)


def test_engine_redis_without_address_takes_redis_url() -> None:
    env = {"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": URL}
    cfg, report = load(env)
    assert cfg.engine.redis.address == (URL,)
    assert report.platform_redis is not None
    assert report.platform_redis.variable == "REDIS_URL"
    assert report.platform_redis.sections == ("engine.redis",)
    # Nothing copied into other variables: the platform may rotate REDIS_URL.
    assert env == {"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": URL}


def test_redis_tls_url_wins_over_redis_url() -> None:
    cfg, report = load(
        {"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": PLAIN, "REDIS_TLS_URL": URL}
    )
    assert cfg.engine.redis.address == (URL,)
    assert report.platform_redis is not None and report.platform_redis.variable == "REDIS_TLS_URL"


def test_an_empty_variable_is_unset() -> None:
    cfg, report = load({"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_TLS_URL": "", "REDIS_URL": PLAIN})
    assert cfg.engine.redis.address == (PLAIN,)
    assert report.platform_redis is not None and report.platform_redis.variable == "REDIS_URL"


def test_memory_engine_ignores_redis_url() -> None:
    # The engine type is never switched: an app may use its Redis add-on for something else.
    cfg, report = load({"REDIS_URL": URL})
    assert cfg.engine.type == "memory"
    assert cfg.engine.redis.address == ("redis://127.0.0.1:6379",)
    assert report.platform_redis is None


@pytest.mark.parametrize("key", ["ADDRESS", "CLUSTER_ADDRESS", "SENTINEL_ADDRESS"], ids=str.lower)
def test_an_address_from_env_wins(key: str) -> None:
    env = {
        "CENTRIFUGO_ENGINE_TYPE": "redis",
        f"CENTRIFUGO_ENGINE_REDIS_{key}": "127.0.0.1:7000",
        "CENTRIFUGO_ENGINE_REDIS_SENTINEL_MASTER_NAME": "m",
        "REDIS_URL": URL,
    }
    cfg, report = load(env)
    assert URL not in cfg.engine.redis.address
    assert report.platform_redis is None


def test_an_address_from_the_file_or_a_flag_wins(tmp_path: Path) -> None:
    file = {"engine": {"type": "redis", "redis": {"address": "redis://10.0.0.1:6379"}}}
    cfg, report = load({"REDIS_URL": URL}, file, tmp_path)
    assert cfg.engine.redis.address == ("redis://10.0.0.1:6379",)
    assert report.platform_redis is None
    flagged = {"engine.redis.address": "redis://10.0.0.2:6379"}
    cfg, report = load_config_report(
        None, env={"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": URL}, flags=flagged
    )
    assert cfg.engine.redis.address == ("redis://10.0.0.2:6379",)
    assert report.platform_redis is None


def test_every_redis_section_in_use_without_address(tmp_path: Path) -> None:
    file = {
        "engine": {"type": "memory"},
        "broker": {"enabled": True, "type": "redis"},
        "presence_manager": {
            "enabled": True,
            "type": "redis",
            "redis": {"address": "redis://10.0.0.3:6379"},
        },
        "map_broker": {"type": "redis"},
    }
    cfg, report = load({"REDIS_URL": URL}, file, tmp_path)
    assert cfg.broker.redis.address == (URL,)
    assert cfg.map_broker.redis.address == (URL,)
    assert cfg.presence_manager.redis.address == ("redis://10.0.0.3:6379",)
    assert cfg.engine.redis.address == ("redis://127.0.0.1:6379",)  # not in use
    assert report.platform_redis is not None
    assert report.platform_redis.sections == ("broker.redis", "map_broker.redis")


def test_heroku_self_signed_certificate_through_the_tls_block() -> None:
    # Heroku Redis: rediss:// with a self-signed certificate. Centrifugo's own TLS keys of the
    # section accept it; the URL stays as the platform wrote it.
    env = {
        "CENTRIFUGO_ENGINE_TYPE": "redis",
        "CENTRIFUGO_ENGINE_REDIS_TLS_ENABLED": "true",
        "CENTRIFUGO_ENGINE_REDIS_TLS_INSECURE_SKIP_VERIFY": "true",
        "REDIS_URL": URL,
    }
    cfg, report = load(env)
    assert report.platform_redis is not None and report.platform_redis.system_roots == ()
    assert "system roots" not in report.platform_redis.message()
    (spec,) = specs_from_config(cfg.engine.redis, "engine.redis")
    assert (spec.host, spec.port, spec.password) == (
        "ec2-1-2-3-4.compute-1.amazonaws.com",
        12345,
        "p@ss",
    )
    assert spec.tls is not None
    assert spec.tls.context.verify_mode == ssl.CERT_NONE
    assert spec.tls.context.check_hostname is False


def test_rediss_without_tls_block_verifies_and_the_line_says_how_to_change_it() -> None:
    cfg, report = load({"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": URL})
    (spec,) = specs_from_config(cfg.engine.redis, "engine.redis")
    assert spec.tls is not None and spec.tls.context.verify_mode == ssl.CERT_REQUIRED
    assert report.platform_redis is not None
    message = report.platform_redis.message()
    assert "engine.redis.tls.insecure_skip_verify" in message and "\n" not in message
    assert URL not in message and "p%40ss" not in message  # never the credentials


def test_load_config_says_so_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="centrifugo.config"):
        load_config(None, env={"CENTRIFUGO_ENGINE_TYPE": "redis", "REDIS_URL": PLAIN})
    lines = [r.getMessage() for r in caplog.records if r.name == "centrifugo.config"]
    assert lines == ["engine.redis.address not configured: using REDIS_URL (set by the platform)"]
