"""`controller` (Centrifugo 6.8+'s custom controller, OSS type postgres): the section's keys and
defaults, its validation, and what app/engines/build.py makes of it (the PostgreSQL
controller in place of the broker's or of the node-local one). No database is contacted:
the controller is built, not run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_config, load_config_report
from app.engines.build import build_engines
from app.engines.memory import MemoryBroker
from app.engines.postgres import PostgresController, PostgresStreamBroker

DSN = "postgres://u@127.0.0.1:1/db"


def load(tmp_path: Path, **top: Any) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(top))
    return load_config_report(str(path), env={})


def test_section_has_centrifugos_keys_and_defaults(tmp_path: Path) -> None:
    cfg, report = load(
        tmp_path,
        controller={"enabled": True, "type": "postgres", "postgres": {"dsn": DSN}},
    )
    pg = cfg.controller.postgres
    assert (pg.pool_size, pg.num_shards, pg.table_prefix, pg.poll_interval) == (8, 1, "cf", 0.05)
    assert (pg.use_notify, pg.notify_dsn, pg.skip_schema_init) == (False, "", False)
    assert (pg.partition_retention_days, pg.partition_lookahead_days) == (1, 2)
    assert (pg.partition_cleanup_interval, pg.batch_size) == (60.0, 1000)
    assert not report.unsupported  # controller is honoured now
    controller = build_engines(cfg).controller
    assert isinstance(controller, PostgresController)
    assert controller.names.stream == "cf_controller_messages"
    assert controller.names.publish == "cf_controller_publish"
    assert controller.names.notify_channel == "cf_controller_notify"


def test_overrides_the_broker_s_controller(tmp_path: Path) -> None:
    section = {
        "enabled": True,
        "type": "postgres",
        "postgres": {"dsn": DSN, "table_prefix": "prod_", "num_shards": 0},
    }
    cfg, _ = load(
        tmp_path,
        broker={"enabled": True, "type": "postgres", "postgres": {"dsn": DSN}},
        controller=section,
    )
    engines = build_engines(cfg)
    assert isinstance(engines.broker, PostgresStreamBroker)
    assert isinstance(engines.controller, PostgresController)
    # Zero takes Centrifugo's default; a trailing underscore is not doubled.
    assert engines.controller.num_shards == 1
    assert engines.controller.names.shard_lock == "prod_controller_shard_lock"
    # The memory engine's broker is a Controller of its own: the section still wins.
    cfg, _ = load(tmp_path, controller=section)
    engines = build_engines(cfg)
    assert isinstance(engines.broker, MemoryBroker)
    assert isinstance(engines.controller, PostgresController)


def test_disabled_section_leaves_control_to_the_broker(tmp_path: Path) -> None:
    cfg, _ = load(tmp_path, controller={"type": "postgres", "postgres": {"dsn": DSN}})
    engines = build_engines(cfg)
    assert engines.controller is engines.broker


def test_env_reaches_the_section() -> None:
    cfg = load_config(
        None,
        env={
            "CENTRIFUGO_CONTROLLER_ENABLED": "true",
            "CENTRIFUGO_CONTROLLER_TYPE": "postgres",
            "CENTRIFUGO_CONTROLLER_POSTGRES_DSN": DSN,
            "CENTRIFUGO_CONTROLLER_POSTGRES_USE_NOTIFY": "true",
            "CENTRIFUGO_CONTROLLER_POSTGRES_POLL_INTERVAL": "200ms",
        },
    )
    pg = cfg.controller.postgres
    assert (pg.dsn, pg.use_notify, pg.poll_interval) == (DSN, True, 0.2)


@pytest.mark.parametrize("kind", ["redis", "nats", ""])
def test_only_postgres_is_known(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"controller": {"enabled": True, "type": kind}}))
    with pytest.raises(ConfigError, match="controller.type"):
        load_config(str(path), env={})
