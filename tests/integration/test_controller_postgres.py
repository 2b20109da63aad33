"""PostgresController (app/engines/postgres/controller.py) against a real PostgreSQL started by
the tests (tests/support/postgres.py): control messages to every node and to one node,
their order, the NOTIFY wake-up, the partition upkeep, Centrifugo's schema (a message
written by plain SQL, as a Centrifugo node sharing the database writes it), a PostgreSQL
restart and a start while PostgreSQL is away.

One cluster per module; each test gets tables of its own (a table_prefix of its own).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from app.engines.postgres import PostgresController
from app.errors import ERROR_INTERNAL, ClientError
from tests.support import postgres
from tests.support.engine import EngineEvents, until

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


@pytest.fixture
def prefix() -> str:
    return f"c{next(_prefixes)}"


Node = tuple[PostgresController, EngineEvents]
Maker = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(pg: postgres.PostgresServer, prefix: str) -> AsyncIterator[Maker]:
    """`await make_node(**controller_kw)` -> a running (controller, recorder) on the test's
    tables: one node. Partition upkeep is off unless asked for."""
    controllers: list[PostgresController] = []

    async def make(**kw: Any) -> Node:
        kw.setdefault("table_prefix", prefix)
        kw.setdefault("poll_interval", 0.02)
        kw.setdefault("partition_cleanup_interval", 0)
        controller = PostgresController(pg.dsn, **kw)
        events = EngineEvents()
        controllers.append(controller)
        await controller.run_control(events)
        return controller, events

    yield make
    for c in reversed(controllers):
        await c.close()


@pytest.fixture
async def db(pg: postgres.PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn)
    yield conn
    await conn.close()


async def test_broadcast_reaches_every_node_the_sender_included(make_node: Maker) -> None:
    nodes = [await make_node() for _ in range(3)]
    await nodes[0][0].publish_control(b"\x00all")
    for _, events in nodes:
        assert await events.next("control") == b"\x00all"


async def test_targeted_message_reaches_only_its_node(make_node: Maker) -> None:
    (a, ea), (_, eb), (_, ec) = [await make_node(num_shards=4) for _ in range(3)]
    await a.publish_control(b"for-b", eb.id)
    assert await eb.next("control") == b"for-b"
    # A broadcast written after it: once every node has it, the targeted one was read past.
    await a.publish_control(b"all")
    assert await ec.next("control") == b"all"
    assert await ea.next("control") == b"all"
    assert await eb.next("control") == b"all"
    assert ea.controls == ec.controls == [b"all"]


async def test_every_node_sees_one_order(make_node: Maker) -> None:
    # One shard (the default): every reader sees the messages of all senders in one order,
    # each sender's in the order it sent them.
    nodes = [await make_node(batch_size=7) for _ in range(3)]
    n = 60

    async def send(i: int) -> None:
        c = nodes[i][0]
        for k in range(n):
            await c.publish_control(f"{i}:{k}".encode())

    await asyncio.gather(send(0), send(1))

    def all_in(events: EngineEvents) -> Callable[[], bool]:
        return lambda: len(events.controls) >= 2 * n

    for _, events in nodes:
        await events.wait_for(all_in(events))
    seen = nodes[0][1].controls
    assert len(seen) == 2 * n
    for _, events in nodes[1:]:
        assert events.controls == seen
    for sender in ("0", "1"):
        mine = [m.decode() for m in seen if m.decode().startswith(sender + ":")]
        assert mine == [f"{sender}:{k}" for k in range(n)]


async def test_notify_wakes_the_readers(make_node: Maker) -> None:
    # Polling every 30 s: only the NOTIFY can deliver within the wait.
    a, ea = await make_node(use_notify=True, poll_interval=30)
    b, _ = await make_node(poll_interval=30)
    assert a.outbox is not None
    await until("LISTEN", a.outbox.listening.is_set, 5)
    await b.publish_control(b"wake")
    assert await ea.next("control", timeout=5) == b"wake"


async def test_schema_is_centrifugos_and_a_plain_sql_message_is_delivered(
    make_node: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    _, events = await make_node(num_shards=3, partition_lookahead_days=1)
    await make_node(num_shards=3, partition_lookahead_days=1)  # a second start: no-op
    tables = {
        r[0]
        for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{prefix}\\_%"
        )
    }
    today = dt.datetime.now(dt.UTC).date()
    days = [f"{d:%Y_%m_%d}" for d in (today, today + dt.timedelta(days=1))]
    assert tables == {
        f"{prefix}_controller_messages",
        f"{prefix}_controller_shard_lock",
        f"{prefix}_controller_schema_version",
        *(f"{prefix}_controller_messages_{d}" for d in days),
    }
    shards = await db.fetch(f"SELECT shard_id FROM {prefix}_controller_shard_lock ORDER BY 1")
    assert [r[0] for r in shards] == [0, 1, 2]
    assert (
        await db.fetchval(
            f"SELECT schema_version FROM {prefix}_controller_schema_version WHERE id = 1"
        )
        == 1
    )
    # What a Centrifugo node does to publish (its PublishControl), here without num_shards:
    # the function counts the shard lock rows.
    await db.execute(f"SELECT {prefix}_controller_publish($1, $2)", b"from-sql", events.id)
    assert await events.next("control") == b"from-sql"
    await db.execute(f"SELECT {prefix}_controller_publish($1)", b"to-all")
    assert await events.next("control") == b"to-all"


async def test_cleanup_drops_old_partitions_and_makes_lookahead(
    make_node: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    c, _ = await make_node(partition_lookahead_days=3, partition_retention_days=1)
    table = f"{prefix}_controller_messages"
    today = dt.datetime.now(dt.UTC).date()
    old = today - dt.timedelta(days=3)
    await db.execute(
        f"CREATE TABLE {table}_{old:%Y_%m_%d} PARTITION OF {table} FOR VALUES FROM "
        f"('{old:%Y-%m-%d} 00:00:00+00') TO ('{old + dt.timedelta(days=1):%Y-%m-%d} 00:00:00+00')"
    )
    await c.cleanup()
    parts = {
        r[0]
        for r in await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
            table,
        )
    }
    assert parts == {f"{table}_{today + dt.timedelta(days=d):%Y_%m_%d}" for d in range(4)}


async def test_postgres_restart_heals(make_node: Maker, pg: postgres.PostgresServer) -> None:
    (a, ea), (b, eb) = await make_node(use_notify=True), await make_node()
    await a.publish_control(b"before")
    assert await eb.next("control") == b"before"
    pg.stop()
    with pytest.raises(ClientError) as e:
        await a.publish_control(b"lost")
    assert e.value.code == ERROR_INTERNAL
    assert b.outbox is not None
    await until("reader failing", lambda: b.outbox is not None and not b.outbox.healthy, 5)
    pg.start()
    await until("reader back", lambda: b.outbox is not None and b.outbox.healthy, 15)
    await a.publish_control(b"after")
    assert await eb.next("control", timeout=10) == b"after"
    assert await ea.next("control", timeout=10) == b"before"
    assert await ea.next("control", timeout=10) == b"after"
    assert eb.controls == [b"before", b"after"]


async def test_start_while_postgres_is_away_heals(
    make_node: Maker, pg: postgres.PostgresServer
) -> None:
    pg.stop()
    try:
        c, events = await make_node()
        assert c.outbox is None
        with pytest.raises(ClientError) as e:
            await c.publish_control(b"x")
        assert e.value.code == ERROR_INTERNAL
    finally:
        pg.start()
    await until("set up after PostgreSQL started", lambda: c.outbox is not None, 15)
    await c.publish_control(b"y")
    assert await events.next("control") == b"y"


async def test_newer_schema_is_one_error_line_and_the_node_stays_down(
    make_node: Maker, db: asyncpg.Connection, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A database a newer server migrated: nothing to wait for, no traceback, not healthy.
    await make_node()
    await db.execute(f"UPDATE {prefix}_controller_schema_version SET schema_version = 99")
    with caplog.at_level("ERROR", logger="centrifugo.postgres"):
        c, _ = await make_node()
    assert c.outbox is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "99" in errors[0].getMessage()
    assert errors[0].exc_info is None
