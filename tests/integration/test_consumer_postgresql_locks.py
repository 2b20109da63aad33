"""Two `postgresql` consumers of one outbox (two nodes on one Redis engine), in process with a
real PostgreSQL: the partition locks let one consumer at a time read a partition, so every
row is published once and each partition's rows in `id` order, with `pg_advisory_xact_lock`
(waiting) and with `use_try_lock` (skipping); without notifications, polling only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from app.api.executor import ApiExecutor
from app.config import load_config
from app.config.schema_consumers import PostgresConsumerConfig
from app.consumers import ConsumerContext
from app.consumers.dispatch import Dispatcher
from app.consumers.postgresql import PostgresConsumer
from app.node import Node
from app.web import create_node
from tests.support import postgres
from tests.support.redis_server import RedisProcess

PARTITIONS = 3
ROWS = 150  # per partition


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    engine = RedisProcess()
    engine.start()
    flags = {
        "engine.type": "redis",
        "engine.redis.address": engine.address,
        "channel.without_namespace.history_size": 1000,
        "channel.without_namespace.history_ttl": "300s",
    }
    out = [create_node(load_config(None, env={}, flags=flags)) for _ in range(2)]
    for node in out:
        await node.start()
    yield out
    for node in out:
        await node.shutdown()
    engine.cleanup()


@pytest.mark.parametrize("try_lock", [False, True], ids=["wait", "try"])
async def test_each_row_once_in_partition_order(
    pg: postgres.PostgresServer, nodes: list[Node], try_lock: bool
) -> None:
    table = f"outbox_{'try' if try_lock else 'wait'}"
    conn = await asyncpg.connect(pg.dsn)
    await conn.execute(
        f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, method text NOT NULL, "
        "payload JSONB NOT NULL, partition INTEGER NOT NULL default 0)"
    )
    cfg = PostgresConsumerConfig(
        dsn=pg.dsn,
        outbox_table_name=table,
        num_partitions=PARTITIONS,
        partition_select_limit=7,
        partition_poll_interval=0.02,  # type: ignore[arg-type]
        use_try_lock=try_lock,
    )
    consumers = [
        PostgresConsumer(
            "locks", cfg, ConsumerContext(Dispatcher(ApiExecutor(n, "consuming")), f"n{i}")
        )
        for i, n in enumerate(nodes)
    ]
    for c in consumers:
        await c.start()
    try:
        rows = [
            ("publish", json.dumps({"channel": f"p{p}", "data": {"n": n}}), p)
            for n in range(ROWS)
            for p in range(PARTITIONS)
        ]
        await conn.executemany(
            f"INSERT INTO {table} (method, payload, partition) VALUES ($1, $2, $3)", rows
        )
        async with asyncio.timeout(30):
            while True:
                if not await conn.fetchval(f"SELECT count(*) FROM {table}"):
                    break
                await asyncio.sleep(0.05)  # polled: the consumers delete in other sessions
        for p in range(PARTITIONS):
            pubs = (await nodes[0].history(f"p{p}", limit=-1)).publications
            # No idempotency keys here: a row run twice would show twice.
            assert [json.loads(bytes(x.data))["n"] for x in pubs] == list(range(ROWS))
    finally:
        for c in consumers:
            await c.stop()
        await conn.close()
