"""Who runs a Redis stream entry while its worker retries (app/consumers/redis_stream.py), in
process with real redis-servers: a live worker's entry is never claimed by another however
long it retries (its idle time is reset), so it is published once, by that worker, when the
engine is back. A dead worker's entries being claimed is tests/e2e/test_consumer_redis_stream.py's
SIGKILL case."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.api.executor import ApiExecutor
from app.config import load_config
from app.config.schema_consumers import RedisStreamConsumerConfig
from app.consumers import ConsumerContext
from app.consumers.dispatch import Dispatcher
from app.consumers.redis_stream import RedisStreamConsumer
from app.node import Node
from app.web import create_node
from tests.support.engine import until
from tests.support.node import start_memory_node
from tests.support.redis_server import RedisProcess

HISTORY = {"history_size": 10, "history_ttl": "300s"}
VISIBILITY = 1.0


@pytest.fixture
async def servers() -> AsyncIterator[tuple[RedisProcess, RedisProcess]]:
    streams, engine = RedisProcess(), RedisProcess()
    streams.start()
    engine.start()
    yield streams, engine
    streams.cleanup()
    engine.cleanup()


def consumer(node: Node, streams: RedisProcess, node_id: str) -> RedisStreamConsumer:
    cfg = RedisStreamConsumerConfig(
        address=(streams.address,),
        streams=("s",),
        consumer_group="g",
        visibility_timeout=VISIBILITY,  # type: ignore[arg-type]
    )
    ctx = ConsumerContext(Dispatcher(ApiExecutor(node, "consuming")), node_id)
    return RedisStreamConsumer("claims", cfg, ctx)


async def history(node: Node, channel: str) -> list[bytes]:
    return [bytes(p.data) for p in (await node.history(channel, limit=-1)).publications]


async def test_a_retrying_worker_keeps_its_entry_a_dead_one_loses_it(
    servers: tuple[RedisProcess, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    streams, engine = servers
    flags = {
        "engine.type": "redis",
        "engine.redis.address": engine.address,
        "channel.without_namespace.history_size": 10,
        "channel.without_namespace.history_ttl": "300s",
    }
    node_a = create_node(load_config(None, env={}, flags=flags))
    await node_a.start()
    workdir = Path(tempfile.mkdtemp())
    node_b = await start_memory_node(workdir, {"channel": {"without_namespace": HISTORY}})
    a, b = consumer(node_a, streams, "a"), consumer(node_b, streams, "b")
    client = aioredis.Redis(port=streams.port, decode_responses=True)
    try:
        await a.start()
        await until_group(client)
        engine.stop()  # node a's engine is down: its dispatch retries
        payload = {"channel": "x", "data": {"n": 1}, "idempotency_key": "x1"}
        await client.xadd("s", {"method": "publish", "payload": json.dumps(payload)})
        await until("a retrying", lambda: "retrying" in caplog.text)
        await b.start()
        # Three visibility timeouts: b's reclaimer runs every 0.5 s and finds nothing idle.
        await until_pending_idle_checks(client, rounds=6)
        assert await history(node_b, "x") == []
        (entry,) = await client.xpending_range("s", "g", "-", "+", 10)
        assert entry["consumer"] == "a"

        engine.start()  # a's publish goes through; it acknowledges
        await until_acked(client)
        assert await history(node_a, "x") == [b'{"n": 1}']
        assert await history(node_b, "x") == []

    finally:
        await a.stop()
        await b.stop()
        await client.aclose()
        await node_b.shutdown()
        if not engine.alive():
            engine.start()
        await node_a.shutdown()


async def until_group(client: aioredis.Redis) -> None:
    async def made() -> bool:
        try:
            return bool(await client.xinfo_groups("s"))
        except aioredis.ResponseError:
            return False

    for _ in range(200):
        if await made():
            return
        await client.ping()
    raise AssertionError("consumer group never made")


async def until_pending_idle_checks(client: aioredis.Redis, rounds: int) -> None:
    """Wait `rounds` half-visibility periods, checking each time that the entry's idle time
    stays under the visibility timeout (so nobody may claim it)."""
    for _ in range(rounds):
        await asyncio.sleep(VISIBILITY / 2)  # the property is about elapsed time itself
        (entry,) = await client.xpending_range("s", "g", "-", "+", 10)
        assert int(entry["time_since_delivered"]) < VISIBILITY * 1000, entry


async def until_acked(client: aioredis.Redis, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        group = (await client.xinfo_groups("s"))[0]
        if group["pending"] == 0 and group["lag"] == 0:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not acknowledged: {group}")
        await asyncio.sleep(0.05)  # XINFO has no notification
