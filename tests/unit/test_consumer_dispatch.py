"""The consumers' dispatcher (app/consumers/dispatch.py) on a real Node: commands run as the
HTTP API runs them, Centrifugo's retry rule (only an internal error is retried), publication
data mode, and `dispatch_until_done` riding out a Redis outage without losing or repeating a
publication. The memory engine for the rules; a real redis-server for the outage."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from app.api.executor import ApiExecutor
from app.config import load_config
from app.consumers.backoff import MAX_BACKOFF, Backoff, dispatch_until_done
from app.consumers.dispatch import ConsumedPublication, Dispatcher, Retry
from app.node import Node
from app.web import create_node
from tests.support.engine import until
from tests.support.node import memory_node
from tests.support.redis_server import RedisProcess

HISTORY = {"history_size": 10, "history_ttl": "300s"}
CONFIG: dict[str, Any] = {
    "channel": {
        "without_namespace": HISTORY,
        "namespaces": [{"name": "obj", "publication_data_format": "json_object", **HISTORY}],
    }
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path, CONFIG) as n:
        yield n


async def datas(node: Node, channel: str) -> list[bytes]:
    result = await node.history(channel, limit=-1)
    return [bytes(p.data) for p in result.publications]


async def test_command_with_method_runs_like_the_http_api(node: Node) -> None:
    d = Dispatcher(ApiExecutor(node, "consuming"))
    await d.dispatch_command("publish", b'{"channel": "a", "data": {"n": 1}}')
    assert await datas(node, "a") == [b'{"n": 1}']


async def test_envelope_payload_as_object_or_json_string(node: Node) -> None:
    d = Dispatcher(ApiExecutor(node, "consuming"))
    await d.dispatch_command("", b'{"method": "publish", "payload": {"channel": "b", "data": 1}}')
    inner = json.dumps({"channel": "b", "data": 2})  # Debezium's JSONB-as-string
    await d.dispatch_command("", json.dumps({"method": "publish", "payload": inner}).encode())
    assert await datas(node, "b") == [b"1", b"2"]


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("publish", b'{"channel": "", "data": 1}'),  # 107 bad request
        ("publish", b'{"channel": "obj:x", "data": [1]}'),  # 107: not a JSON object
        ("publish", b"{not json"),  # undecodable request
        ("publish", b'{"channel": 5}'),  # wrong type
        ("history", b'{"channel": "a"}'),  # not a consumed method
        ("", b"garbage"),  # malformed envelope
        ("", b'{"method": "nope", "payload": {}}'),
    ],
)
async def test_non_retryable_failures_are_done_and_logged_once(
    node: Node, method: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "centrifugo.consumers")
    d = Dispatcher(ApiExecutor(node, "consuming"))
    await d.dispatch_command(method, payload)  # returns: the message counts as done
    lines = [r for r in caplog.records if r.name == "centrifugo.consumers"]
    assert len(lines) == 1
    assert lines[0].exc_info is None


async def test_publication_data_mode_publishes_or_broadcasts(node: Node) -> None:
    d = Dispatcher(ApiExecutor(node, "consuming"))
    await d.dispatch_publication(["c"], ConsumedPublication(data=b'{"x":1}', tags={"k": "v"}))
    await d.dispatch_publication(["d", "e"], ConsumedPublication(data=b"2"))
    await d.dispatch_publication([], ConsumedPublication(data=b"3"))
    assert await datas(node, "c") == [b'{"x":1}']
    pubs = (await node.history("c", limit=-1)).publications
    assert dict(pubs[0].tags or {}) == {"k": "v"}
    assert await datas(node, "d") == await datas(node, "e") == [b"2"]


async def test_publication_idempotency_key_publishes_once(node: Node) -> None:
    d = Dispatcher(ApiExecutor(node, "consuming"))
    for _ in range(2):  # a redelivery of the same message
        await d.dispatch_publication(["f"], ConsumedPublication(data=b"1", idempotency_key="k1"))
    assert await datas(node, "f") == [b"1"]


def test_backoff_is_centrifugos() -> None:
    b = Backoff()
    waits = [b.next() for _ in range(12)]
    assert 0.02 <= waits[0] < 0.04  # (10ms + jitter < 10ms) * 2
    assert waits == sorted(waits)
    assert waits[-1] == MAX_BACKOFF
    b.reset()
    assert b.next() < 0.04


@pytest.fixture
async def redis_node(tmp_path: Path) -> AsyncIterator[tuple[Node, RedisProcess]]:
    server = RedisProcess()
    server.start()
    cfg = load_config(
        None,
        env={},
        flags={
            "engine.type": "redis",
            "engine.redis.address": server.address,
            "channel.without_namespace.history_size": 10,
            "channel.without_namespace.history_ttl": "300s",
        },
    )
    node = create_node(cfg)
    await node.start()
    try:
        yield node, server
    finally:
        await node.shutdown()
        server.cleanup()


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("retrying" in r.getMessage() for r in caplog.records)


async def test_internal_error_is_retried_until_redis_returns(
    redis_node: tuple[Node, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    node, server = redis_node
    d = Dispatcher(ApiExecutor(node, "consuming"))
    payload = b'{"channel": "g", "data": {"n": 1}, "idempotency_key": "g1"}'
    server.stop()
    with pytest.raises(Retry):
        await d.dispatch_command("publish", payload)
    stopping = asyncio.Event()
    task = asyncio.create_task(
        dispatch_until_done("t", lambda: d.dispatch_command("publish", payload), stopping)
    )
    await until("three failed attempts", lambda: retries_logged(caplog) >= 3)
    assert not task.done()
    server.start()
    assert await asyncio.wait_for(task, 15) is True
    assert await datas(node, "g") == [b'{"n": 1}']
    # The same message delivered again (its ack lost): the idempotency key keeps it single.
    await d.dispatch_command("publish", payload)
    assert await datas(node, "g") == [b'{"n": 1}']


async def test_dispatch_until_done_gives_up_only_on_stop(
    redis_node: tuple[Node, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    node, server = redis_node
    d = Dispatcher(ApiExecutor(node, "consuming"))
    server.stop()
    stopping = asyncio.Event()
    publish = partial(d.dispatch_command, "publish", b'{"channel": "h", "data": 1}')
    task = asyncio.create_task(dispatch_until_done("t", publish, stopping))
    await until("a failed attempt", lambda: retries_logged(caplog) >= 1)
    stopping.set()
    assert await asyncio.wait_for(task, 5) is False
