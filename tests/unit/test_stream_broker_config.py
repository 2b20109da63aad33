"""`broker.postgres` (Centrifugo 6.8+'s PostgreSQL stream broker): the section's keys and
defaults, its validation, and what app/engines/build.py makes of it (the broker, the
presence manager beside it, the node-local controller, the worker count it allows). No
database is contacted: the broker is built, not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_config, load_config_report
from app.engines.build import build_engines, uses_memory_engine
from app.engines.memory import MemoryBroker, MemoryPresenceManager
from app.engines.postgres import PostgresStreamBroker


def load(tmp_path: Path, broker: dict[str, Any], **top: Any) -> Any:
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"broker": broker, **top}))
    return load_config_report(str(path), env={})


def test_section_has_centrifugos_keys_and_defaults(tmp_path: Path) -> None:
    cfg, report = load(
        tmp_path,
        {
            "enabled": True,
            "type": "postgres",
            "postgres": {
                "dsn": "postgres://u@127.0.0.1:1/db",
                "num_shards": 4,
                "table_prefix": "prod_cf_",
                "outbox": {"poll_interval": "250ms"},
                "use_notify": True,
            },
        },
    )
    pg = cfg.broker.postgres
    assert (pg.pool_size, pg.cleanup_interval, pg.idempotent_result_ttl) == (16, 60.0, 300.0)
    assert (pg.stream_retention, pg.partition_lookahead_days, pg.partition_retention_days) == (
        86400.0,
        2,
        7,
    )
    assert (pg.outbox.poll_interval, pg.outbox.batch_size) == (0.25, 1000)
    assert (pg.binary_data, pg.skip_schema_init, pg.notify_dsn) == (False, False, "")
    assert not report.unsupported  # broker.postgres is honoured now
    engines = build_engines(cfg)
    broker = engines.broker
    assert isinstance(broker, PostgresStreamBroker)
    assert (
        broker.names.stream == "prod_cf_stream" and broker.names.publish == "prod_cf_stream_publish"
    )
    assert broker.num_shards == 4
    # Not a Controller: control stays within the node (centrifuge's memory controller).
    assert isinstance(engines.controller, MemoryBroker)
    assert isinstance(engines.presence, MemoryPresenceManager)


def test_env_reaches_the_section() -> None:
    cfg = load_config(
        None,
        env={
            "CENTRIFUGO_BROKER_ENABLED": "true",
            "CENTRIFUGO_BROKER_TYPE": "postgres",
            "CENTRIFUGO_BROKER_POSTGRES_DSN": "postgres://u@h/db",
            "CENTRIFUGO_BROKER_POSTGRES_BINARY_DATA": "true",
        },
    )
    assert cfg.broker.postgres.dsn == "postgres://u@h/db" and cfg.broker.postgres.binary_data
    broker = build_engines(cfg).broker
    assert isinstance(broker, PostgresStreamBroker)
    assert broker.names.meta == "cf_binary_stream_meta"


def test_dsn_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgres stream broker: DSN is required"):
        load(tmp_path, {"enabled": True, "type": "postgres"})


def test_several_workers_are_allowed_with_node_presence(tmp_path: Path) -> None:
    # Each worker is a node; Centrifugo's nodes on this broker keep memory presence each.
    broker = {"enabled": True, "type": "postgres", "postgres": {"dsn": "postgres://u@h/db"}}
    cfg, _ = load(tmp_path, broker)
    assert not uses_memory_engine(cfg)
    cfg, _ = load(
        tmp_path,
        broker,
        presence_manager={"enabled": True, "type": "redis"},
    )
    assert not uses_memory_engine(cfg)
    assert not isinstance(build_engines(cfg).presence, MemoryPresenceManager)
