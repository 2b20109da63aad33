"""The `postgresql` outbox consumer end to end: a real PostgreSQL (tests/support/postgres.py),
`python -m app --workers 2` on the Redis engine, centrifuge-python subscribers.

The test writes outbox rows the way a backend does (Centrifugo's table, one channel per
partition, `pg_notify` in the inserting transaction) and checks that each channel's
subscriber gets every row exactly once and in `id` order, while a worker is SIGKILLed and
while PostgreSQL restarts; the table ends empty (rows are deleted only once done).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import asyncpg
import pytest

from tests.support import postgres

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, RedisProcess, SdkSubscriber, redis_config, worker_pids

WORKERS = 2
PARTITIONS = 2
TABLE = "centrifugo_outbox"
NOTIFY = "centrifugo_partition_change"

# Centrifugo's outbox table, as its documentation gives it.
SCHEMA = f"""
CREATE TABLE {TABLE} (
    id BIGSERIAL PRIMARY KEY,
    method text NOT NULL,
    payload JSONB NOT NULL,
    partition INTEGER NOT NULL default 0,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL
)
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()

    async def make() -> None:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute(SCHEMA)
        await conn.close()

    asyncio.run(make())
    yield server
    server.remove()


@pytest.fixture(scope="module")
def srv(
    server_factory: Any, redis_server: RedisProcess, pg: postgres.PostgresServer
) -> ServerHandle:
    consumer = {
        "name": "outbox",
        "enabled": True,
        "type": "postgresql",
        "postgresql": {
            "dsn": pg.dsn,
            "outbox_table_name": TABLE,
            "num_partitions": PARTITIONS,
            "partition_select_limit": 10,
            "partition_notification_channel": NOTIFY,
        },
    }
    return server_factory(redis_config(redis_server.port, consumers=[consumer]), workers=WORKERS)


@pytest.fixture
async def api_client(srv: ServerHandle) -> AsyncIterator[ApiClient]:
    client = ApiClient(srv)
    await client.wait_nodes(WORKERS)
    yield client
    await client.close()


async def write_rows(dsn: str, channels: list[str], numbers: range) -> None:
    """Outbox rows for `numbers` in each channel (channel i in partition i), one transaction
    that also notifies each partition, as a backend's outbox write does."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for n in numbers:
                for partition, channel in enumerate(channels):
                    payload = {"channel": channel, "data": {"n": n}, "idempotency_key": f"{n}"}
                    await conn.execute(
                        f"INSERT INTO {TABLE} (method, payload, partition) VALUES ($1, $2, $3)",
                        "publish",
                        json.dumps(payload),
                        partition,
                    )
            for partition in range(len(channels)):
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY, str(partition))
    finally:
        await conn.close()


async def remaining_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
        return count
    finally:
        await conn.close()


async def all_reach(subs: list[SdkSubscriber], count: int, timeout: float = 10.0) -> None:
    for sub in subs:
        await sub.wait_for(partial(_has, sub, count), timeout, f"{count} publications")


def _has(sub: SdkSubscriber, count: int) -> bool:
    return len(sub.pubs) >= count


def numbers(sub: SdkSubscriber) -> list[int]:
    return [data["n"] for _, data in sub.pubs]


@pytest.mark.timeout(180)
async def test_rows_reach_subscribers_once_in_partition_order_across_kill_and_restart(
    srv: ServerHandle, api_client: ApiClient, pg: postgres.PostgresServer
) -> None:
    channels = [f"rec:pg{p}-{uuid.uuid4().hex[:8]}" for p in range(PARTITIONS)]
    subs = [SdkSubscriber(srv.ws_url, srv.token(f"u{i}"), ch) for i, ch in enumerate(channels)]
    for sub in subs:
        await sub.start()
    try:
        # 1. A worker SIGKILLed while it consumes: its open transaction rolls back, its locks
        # go with its connections, the other worker takes the partitions from the last
        # committed row; a row published but not deleted comes again and its idempotency key
        # keeps the publication single.
        await write_rows(pg.dsn, channels, range(0, 300))
        await all_reach(subs, 30)
        os.kill(worker_pids(srv)[0], signal.SIGKILL)
        await write_rows(pg.dsn, channels, range(300, 400))
        await all_reach(subs, 400, timeout=60)
        await api_client.wait_nodes(WORKERS)  # gunicorn's replacement worker is up

        # 2. PostgreSQL restarted (fast shutdown: every session ended) with rows waiting.
        await write_rows(pg.dsn, channels, range(400, 600))
        pg.restart()
        await write_rows(pg.dsn, channels, range(600, 700))
        await all_reach(subs, 700, timeout=60)

        for sub in subs:
            assert numbers(sub) == list(range(700))
        for channel in channels:
            history = await api_client.result("history", {"channel": channel, "limit": -1})
            assert [p["data"]["n"] for p in history["publications"]] == list(range(700))
        assert await remaining_rows(pg.dsn) == 0
    finally:
        for sub in subs:
            await sub.stop()


async def test_envelope_rows_and_a_poison_row_do_not_block_the_partition(
    srv: ServerHandle, api_client: ApiClient, pg: postgres.PostgresServer
) -> None:
    channel = f"rec:env-{uuid.uuid4().hex[:8]}"
    sub = SdkSubscriber(srv.ws_url, srv.token("u-env"), channel)
    await sub.start()
    try:
        conn = await asyncpg.connect(pg.dsn)
        rows = [
            ("", {"method": "publish", "payload": {"channel": channel, "data": {"n": 0}}}),
            ("publish", {"channel": "", "data": {"n": -1}}),  # 107: logged, deleted
            ("publish", {"channel": channel, "data": {"n": 1}}),
        ]
        for method, payload in rows:
            await conn.execute(
                f"INSERT INTO {TABLE} (method, payload, partition) VALUES ($1, $2, 1)",
                method,
                json.dumps(payload),
            )
        await conn.execute("SELECT pg_notify($1, '1')", NOTIFY)
        await conn.close()
        await sub.wait_for(lambda: len(sub.pubs) >= 2, what="2 publications")
        assert numbers(sub) == [0, 1]
    finally:
        await sub.stop()
