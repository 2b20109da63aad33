"""`consumers[]` as the loader reads it (app/config/schema_consumers.py): Centrifugo's keys and
defaults, CENTRIFUGO_CONSUMERS (JSON or space-separated names, Centrifugo's Consumers.Decode),
per-item CENTRIFUGO_CONSUMERS_<NAME>_<OPTION> overrides, and Centrifugo's Validate() messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, load_config
from app.config.loader import load_config_report


def load(tmp_path: Path, consumers: Any, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"consumers": consumers}))
    return load_config(str(path), env=env or {})


def test_defaults_are_centrifugos(tmp_path: Path) -> None:
    (c,) = load(tmp_path, [{"name": "a1", "type": "postgresql"}]).consumers
    assert (c.enabled, c.postgresql.num_partitions, c.postgresql.partition_select_limit) == (
        False,
        1,
        100,
    )
    assert c.postgresql.partition_poll_interval == 0.3
    rs = c.redis_stream
    assert (rs.address, rs.visibility_timeout, rs.num_workers) == (
        ("redis://127.0.0.1:6379",),
        30.0,
        1,
    )
    assert (rs.payload_value, rs.method_value) == ("payload", "method")
    assert rs.publication_data_mode.channels_value == "centrifugo-channels"
    assert c.kafka.method_header == c.nats_jetstream.method_header == "centrifugo-method"
    assert (c.kafka.max_poll_records, c.kafka.fetch_max_wait, c.kafka.dial_timeout) == (100, 0.5, 3)
    assert (c.nats_jetstream.deliver_policy, c.nats_jetstream.max_ack_pending) == ("new", 100)


def test_env_json_and_per_item_override() -> None:
    items = [{"name": "outbox", "type": "postgresql", "postgresql": {"outbox_table_name": "t"}}]
    env = {
        "CENTRIFUGO_CONSUMERS": json.dumps(items),
        "CENTRIFUGO_CONSUMERS_OUTBOX_POSTGRESQL_DSN": "postgres://x",
        "CENTRIFUGO_CONSUMERS_OUTBOX_POSTGRESQL_NUM_PARTITIONS": "4",
        "CENTRIFUGO_CONSUMERS_OUTBOX_ENABLED": "true",
    }
    (c,) = load_config(None, env=env).consumers
    assert (c.name, c.enabled, c.postgresql.dsn, c.postgresql.num_partitions) == (
        "outbox",
        True,
        "postgres://x",
        4,
    )


def test_env_space_separated_names() -> None:
    env = {
        "CENTRIFUGO_CONSUMERS": "one two",
        "CENTRIFUGO_CONSUMERS_ONE_TYPE": "redis_stream",
        "CENTRIFUGO_CONSUMERS_TWO_TYPE": "kafka",
    }
    cfg = load_config(None, env=env)
    assert [(c.name, c.type) for c in cfg.consumers] == [("one", "redis_stream"), ("two", "kafka")]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"name": "a", "type": "kafka"}, "invalid value for consumers[0].name"),
        ({"name": "ab", "type": "rabbitmq"}, "unknown consumer type: rabbitmq"),
        (
            {"name": "ab", "type": "postgresql", "enabled": True},
            "in consumer ab (postgresql): no Postgres DSN provided",
        ),
        (
            {"name": "ab", "type": "redis_stream", "enabled": True},
            "in consumer ab (redis_stream): streams can't be empty",
        ),
        (
            {"name": "ab", "type": "kafka", "enabled": True, "kafka": {"brokers": ["b:9092"]}},
            "in consumer ab (kafka): no Kafka topics provided",
        ),
        (
            {"name": "ab", "type": "nats_jetstream", "enabled": True},
            "in consumer ab (nats_jetstream): stream_name is required",
        ),
    ],
)
def test_validation_messages(tmp_path: Path, item: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, [item])


def test_disabled_item_is_checked_for_name_and_type_only(tmp_path: Path) -> None:
    (c,) = load(tmp_path, [{"name": "ab", "type": "postgresql"}]).consumers
    assert c.postgresql.dsn == ""


def test_cloud_types_load_and_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    item = {"name": "sqs", "type": "aws_sqs", "enabled": True, "aws_sqs": {"queues": ["q"]}}
    path.write_text(json.dumps({"consumers": [item]}))
    cfg, report = load_config_report(str(path), env={})
    assert dict(cfg.consumers[0].aws_sqs) == {"queues": ["q"]}
    assert [f.key for f in report.unsupported] == ["consumers[sqs].aws_sqs"]
