"""Which consumers a worker runs (app/consumers/build.py): enabled items of the types this
server has, each through its module's create_consumer; a disabled item, a cloud type or a
consumer whose settings cannot be used is skipped with one log line, and the worker runs on."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.api.executor import ApiExecutor
from app.config import load_config
from app.consumers.build import Consumers
from app.consumers.postgresql import PostgresConsumer
from app.node import Node
from tests.support.node import memory_node

PG = {"dsn": "postgres://127.0.0.1:1/x", "outbox_table_name": "t"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path, {}) as n:
        yield n


def build(tmp_path: Path, node: Node, items: list[dict[str, Any]]) -> Consumers:
    path = tmp_path / "consumers.json"
    path.write_text(json.dumps({"consumers": items}))
    cfg = load_config(str(path), env={})
    return Consumers.from_config(cfg, ApiExecutor(node, "consuming"), node.id)


async def test_enabled_known_types_only(
    tmp_path: Path, node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "centrifugo.consumers")
    items: list[dict[str, Any]] = [
        {"name": "on", "enabled": True, "type": "postgresql", "postgresql": PG},
        {"name": "off", "type": "postgresql", "postgresql": PG},
        {"name": "sqs", "enabled": True, "type": "aws_sqs"},
    ]
    consumers = build(tmp_path, node, items)
    assert [(type(c), c.name) for c in consumers.consumers] == [(PostgresConsumer, "on")]
    messages = [r.getMessage() for r in caplog.records]
    assert "consumer off (postgresql) is not enabled, skip" in messages
    assert "consumer sqs: type aws_sqs is not supported here, skip" in messages


async def test_unusable_settings_skip_that_consumer_with_one_line(
    tmp_path: Path, node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    bad_tls = {**PG, "tls": {"enabled": True, "server_ca_pem": str(tmp_path / "missing.pem")}}
    items: list[dict[str, Any]] = [
        {"name": "tls", "enabled": True, "type": "postgresql", "postgresql": bad_tls},
        {
            "name": "addr",
            "enabled": True,
            "type": "redis_stream",
            "redis_stream": {
                "address": ["redis://127.0.0.1:notaport"],
                "streams": ["s"],
                "consumer_group": "g",
            },
        },
    ]
    consumers = build(tmp_path, node, items)
    await consumers.start()
    await consumers.stop()
    assert consumers.consumers == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["consumer tls", "consumer addr"]
    assert all(r.exc_info is None for r in errors)
