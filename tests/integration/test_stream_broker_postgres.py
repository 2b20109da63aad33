"""PostgresStreamBroker (app/engines/postgres/stream_broker.py) against a real PostgreSQL
started by the tests (tests/support/postgres.py): publish and history through Centrifugo's
functions, recovery since an offset, epochs, idempotency, versioned publish, delivery to
every node's subscription (two and three brokers on one database), joins and leaves, the
cleanup of expired meta and idempotency rows, LISTEN/NOTIFY, a PostgreSQL restart, and the
schema itself (Centrifugo's names, both variants, a publication made by plain SQL as an
application would make it in its own transaction).

One cluster per module; each test gets tables of its own (a table_prefix of its own).
Most tests store BYTEA (binary_data) so payloads are any bytes; the JSONB variant has its
own test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from app.engines.postgres import PostgresStreamBroker
from app.engines.postgres.outbox import Outbox
from app.errors import ERROR_INTERNAL, ClientError
from app.models import ClientInfo, HistoryFilter, PublishOptions, PublishResult, StreamPosition
from tests.support import postgres
from tests.support.engine import EngineEvents, until

_prefixes = itertools.count()

HISTORY = PublishOptions(history_size=10, history_ttl=60, history_meta_ttl=3600)


def with_history(**kw: Any) -> PublishOptions:
    return PublishOptions(history_size=10, history_ttl=60, history_meta_ttl=3600, **kw)


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


@pytest.fixture
def prefix() -> str:
    return f"s{next(_prefixes)}"


Node = tuple[PostgresStreamBroker, EngineEvents]
Maker = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(pg: postgres.PostgresServer, prefix: str) -> AsyncIterator[Maker]:
    """`await make_node(**broker_kw)` -> a running (broker, recorder): one node on the
    test's tables. Cleanup is off unless asked for."""
    brokers: list[PostgresStreamBroker] = []

    async def make(**kw: Any) -> Node:
        kw.setdefault("table_prefix", prefix)
        kw.setdefault("binary_data", True)
        kw.setdefault("cleanup_interval", 0)
        kw.setdefault("poll_interval", 0.02)
        kw.setdefault("num_shards", 4)
        broker = PostgresStreamBroker(pg.dsn, **kw)
        events = EngineEvents()
        brokers.append(broker)
        await broker.run(events)
        return broker, events

    yield make
    for b in reversed(brokers):
        await b.close()


@pytest.fixture
async def node(make_node: Maker) -> Node:
    return await make_node()


@pytest.fixture
async def db(pg: postgres.PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn)
    yield conn
    await conn.close()


def outbox(broker: PostgresStreamBroker) -> Outbox:
    assert broker.outbox is not None  # running
    return broker.outbox


# --- publish and history ---


async def test_publish_appends_with_dense_offsets_and_one_epoch(node: Node) -> None:
    broker, _ = node
    info = ClientInfo("user-1", "client-1", b'{"a":1}', b"\x00chan")
    results = [
        await broker.publish("s:one", b"\x00\x01" + bytes([i]), with_history(client_info=info))
        for i in range(3)
    ]
    epoch = results[0].position.epoch
    assert len(epoch) == 8 and all(c in "0123456789abcdef" for c in epoch)
    assert [r.position for r in results] == [StreamPosition(i, epoch) for i in (1, 2, 3)]
    hist = await broker.history("s:one", HistoryFilter(limit=-1))
    assert hist.position == StreamPosition(3, epoch)
    assert [(p.offset, p.data) for p in hist.publications] == [
        (i + 1, b"\x00\x01" + bytes([i])) for i in range(3)
    ]
    assert hist.publications[0].info == info


async def test_history_filters_since_limit_reverse_and_window(node: Node) -> None:
    broker, _ = node
    ch = "s:window"
    for i in range(1, 8):
        await broker.publish(ch, b"%d" % i, PublishOptions(history_size=5, history_ttl=60))
    # The window is the last history_size offsets: 3..7.
    everything = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.offset for p in everything.publications] == [3, 4, 5, 6, 7]
    epoch = everything.position.epoch
    since = await broker.history(ch, HistoryFilter(since=StreamPosition(4, epoch), limit=-1))
    assert [p.offset for p in since.publications] == [5, 6, 7]
    two = await broker.history(ch, HistoryFilter(since=StreamPosition(4, epoch), limit=2))
    assert [p.offset for p in two.publications] == [5, 6]
    rev = await broker.history(ch, HistoryFilter(limit=2, reverse=True))
    assert [p.offset for p in rev.publications] == [7, 6]
    rev_since = await broker.history(
        ch, HistoryFilter(since=StreamPosition(6, epoch), limit=-1, reverse=True)
    )
    assert [p.offset for p in rev_since.publications] == [5, 4, 3]
    top = await broker.history(ch, HistoryFilter(limit=0))
    assert (top.publications, top.position) == ([], StreamPosition(7, epoch))


async def test_history_of_an_unknown_channel_is_empty_and_creates_nothing(
    node: Node, db: asyncpg.Connection, prefix: str
) -> None:
    # Centrifugo's read: no meta row, position (0, ""), nothing written.
    broker, _ = node
    hist = await broker.history("s:nobody", HistoryFilter(limit=-1))
    assert (hist.publications, hist.position) == ([], StreamPosition())
    rows = await db.fetchval(f"SELECT count(*) FROM {prefix}_binary_stream_meta")
    assert rows == 0


async def test_history_ttl_is_applied_when_reading(node: Node, db: asyncpg.Connection) -> None:
    broker, _ = node
    ch = "s:ttl"
    await broker.publish(ch, b"old", PublishOptions(history_size=10, history_ttl=2))
    await broker.publish(ch, b"new", PublishOptions(history_size=10, history_ttl=2))
    # Age the first row past history_ttl, as time would.
    await db.execute(
        f"UPDATE {broker.names.stream} SET created_at = NOW() - interval '1 hour' "
        "WHERE channel = $1 AND channel_offset = 1",
        ch,
    )
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b"new"]
    assert hist.position.offset == 2


async def test_publication_without_history_answers_a_zero_position(node: Node) -> None:
    broker, events = node
    ch = "s:nohistory"
    await broker.subscribe([ch])
    result = await broker.publish(ch, b"x", PublishOptions())
    assert result.position == StreamPosition()
    # Still a row: it is the fan-out (Centrifugo stores and delivers it with its offset).
    pub, epoch = await asyncio.wait_for(_next_pub(events, ch), 5)
    assert (pub.data, pub.offset) == (b"x", 1) and epoch


async def test_remove_history_keeps_epoch_and_offset(node: Node) -> None:
    broker, _ = node
    ch = "s:remove"
    first = await broker.publish(ch, b"a", HISTORY)
    await broker.remove_history(ch)
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert (hist.publications, hist.position) == ([], first.position)
    after = await broker.publish(ch, b"b", HISTORY)
    assert after.position == StreamPosition(2, first.position.epoch)


async def test_recovery_since_an_offset_finds_exactly_the_missed(make_node: Maker) -> None:
    a, _ = await make_node()
    b, _ = await make_node()
    ch = "s:recover"
    seen = await a.publish(ch, b"1", HISTORY)
    for i in range(2, 6):
        await b.publish(ch, b"%d" % i, HISTORY)
    hist = await a.history(ch, HistoryFilter(since=seen.position, limit=-1))
    assert [(p.offset, p.data) for p in hist.publications] == [(i, b"%d" % i) for i in range(2, 6)]
    assert hist.position == StreamPosition(5, seen.position.epoch)


async def test_expired_meta_is_cleaned_and_the_next_publication_starts_a_new_epoch(
    node: Node, db: asyncpg.Connection
) -> None:
    broker, _ = node
    ch = "s:epoch"
    first = await broker.publish(ch, b"a", with_history(idempotency_key="k"))
    await db.execute(
        f"UPDATE {broker.names.meta} SET expires_at = NOW() - interval '1 second' "
        "WHERE channel = $1",
        ch,
    )
    await db.execute(
        f"UPDATE {broker.names.idempotency} SET expires_at = NOW() - interval '1 second'"
    )
    await broker.cleanup()
    assert await db.fetchval(f"SELECT count(*) FROM {broker.names.meta}") == 0
    assert await db.fetchval(f"SELECT count(*) FROM {broker.names.idempotency}") == 0
    gone = await broker.history(ch, HistoryFilter(limit=-1))
    assert gone.position == StreamPosition()
    again = await broker.publish(ch, b"b", with_history(idempotency_key="k"))
    assert not again.suppressed  # the key's result expired with it
    assert again.position.offset == 1 and again.position.epoch != first.position.epoch
    # The old epoch's row is not history of the new one.
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b"b"]


async def test_cleanup_loop_runs_by_itself(make_node: Maker, db: asyncpg.Connection) -> None:
    broker, _ = await make_node(cleanup_interval=0.05)
    opts = with_history(idempotency_key="k", idempotent_result_ttl=0.001)
    await broker.publish("s:loop", b"a", opts)

    async def left() -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {broker.names.idempotency}"))

    # No event to await in the database: poll it until the loop's DELETE shows.
    async with asyncio.timeout(5):
        while await left():  # noqa: ASYNC110 - a DELETE elsewhere has no event to await
            await asyncio.sleep(0.05)


# --- idempotency and versions ---


async def test_idempotent_publish_returns_the_first_result_and_delivers_once(
    make_node: Maker,
) -> None:
    a, events = await make_node()
    b, _ = await make_node()
    ch = "s:idem"
    await a.subscribe([ch])
    first = await a.publish(ch, b"x", with_history(idempotency_key="key-1"))
    second = await b.publish(ch, b"x", with_history(idempotency_key="key-1"))
    assert second.suppressed and second.suppress_reason == "idempotency"
    assert second.position == first.position
    after = await a.publish(ch, b"y", HISTORY)
    assert after.position.offset == 2
    pubs = await events.wait_pubs(ch, 2)
    assert [p.data for p in pubs] == [b"x", b"y"]


async def test_versioned_publish_drops_stale_versions(node: Node) -> None:
    broker, _ = node
    ch = "s:version"
    v2 = await broker.publish(ch, b"v2", with_history(version=2, version_epoch="e"))
    stale = await broker.publish(ch, b"v1", with_history(version=1, version_epoch="e"))
    assert stale.suppressed and stale.suppress_reason == "version"
    assert stale.position == v2.position
    any_epoch = await broker.publish(ch, b"v2-again", with_history(version=2))
    assert any_epoch.suppressed  # "" matches any version epoch
    other_epoch = await broker.publish(ch, b"v1-f", with_history(version=1, version_epoch="f"))
    assert not other_epoch.suppressed and other_epoch.position.offset == 2
    plain = await broker.publish(ch, b"plain", HISTORY)
    assert not plain.suppressed  # unversioned: not checked, baseline kept
    stale_f = await broker.publish(ch, b"v1-f-again", with_history(version=1, version_epoch="f"))
    assert stale_f.suppressed
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b"v2", b"v1-f", b"plain"]
    # Without history versions are ignored (the contract).
    no_hist = await broker.publish(ch, b"x", PublishOptions(version=1, version_epoch="f"))
    assert not no_hist.suppressed


async def test_publish_many_keeps_each_channels_order(make_node: Maker) -> None:
    broker, events = await make_node(binary_data=False)
    channels = ["s:many-a", "s:many-b", "s:many-c"]
    await broker.subscribe(channels)
    items = [(channels[i % 3], b"%d" % i, HISTORY) for i in range(30)]
    items.insert(4, ("s:many-b", b"not json", HISTORY))  # JSONB: this one item fails
    results = await broker.publish_many(items)
    assert isinstance(results[4], ClientError) and results[4].code == ERROR_INTERNAL
    for ch in channels:
        mine = [(d, r) for (c, d, _), r in zip(items, results, strict=True) if c == ch]
        ok = [(d, r) for d, r in mine if isinstance(r, PublishResult)]
        # Offsets follow item order within the channel.
        assert [r.position.offset for _, r in ok] == list(range(1, 11))
        pubs = await events.wait_pubs(ch, 10)
        assert [p.data for p in pubs] == [d for d, _ in ok]


# --- delivery ---


async def _all_of(events: EngineEvents, n: int) -> None:
    def arrived() -> bool:
        return len(events.pubs) >= n

    await events.wait_for(arrived)


async def _next_pub(events: EngineEvents, ch: str) -> Any:
    await events.wait_pubs(ch, 1)
    return next((p, e) for c, p, e in events.pubs if c == ch)


async def test_every_node_gets_every_publication_once_in_order(make_node: Maker) -> None:
    nodes = [await make_node() for _ in range(3)]
    channels = [f"s:fan{i}" for i in range(6)]  # spread over the 4 shards
    for broker, _ in nodes:
        await broker.subscribe(channels)

    async def publish_from(k: int) -> None:
        broker = nodes[k][0]
        for i in range(20):
            await broker.publish(channels[(k + i) % len(channels)], b"%d-%d" % (k, i), HISTORY)

    await asyncio.gather(*(publish_from(k) for k in range(3)))
    for _, events in nodes:
        await _all_of(events, 60)
        for ch in channels:
            offsets = [p.offset for p in events.pubs_in(ch)]
            assert offsets == list(range(1, len(offsets) + 1)), ch  # once each, in order
        assert len(events.pubs) == 60


async def test_subscription_gets_only_what_is_committed_after_it(make_node: Maker) -> None:
    a, events = await make_node()
    b, _ = await make_node()
    ch = "s:after"
    await b.publish(ch, b"before", HISTORY)
    await a.subscribe([ch])
    await b.publish(ch, b"after", HISTORY)
    pubs = await events.wait_pubs(ch, 1)
    await b.publish("s:other", b"unsubscribed", HISTORY)
    await a.unsubscribe([ch])
    await b.publish(ch, b"late", HISTORY)
    await a.subscribe(["s:marker"])
    await b.publish("s:marker", b"m", HISTORY)
    await events.wait_pubs("s:marker", 1)
    assert [p.data for p in pubs] == [b"after"]
    assert {c for c, _, _ in events.pubs} == {ch, "s:marker"}


async def test_join_and_leave_reach_other_nodes(make_node: Maker) -> None:
    a, events = await make_node()
    b, _ = await make_node()
    ch = "s:presence"
    await a.subscribe([ch])
    info = ClientInfo("u", "c", b"ci", b"chi")
    await b.publish_join(ch, info)
    await b.publish_leave(ch, info)
    await events.wait_for(lambda: bool(events.joins and events.leaves))
    assert events.joins == [(ch, info)] and events.leaves == [(ch, info)]
    assert events.pubs == []


async def test_delta_publication_carries_the_flag(node: Node) -> None:
    broker, events = node
    ch = "s:delta"
    await broker.subscribe([ch])
    await broker.publish(ch, b"first", with_history(delta=True))
    await broker.publish(ch, b"second", with_history(delta=True))
    await broker.publish(ch, b"third", HISTORY)
    pubs = await events.wait_pubs(ch, 3)
    # The first has no previous publication to patch against; the third did not ask.
    assert [p.delta for p in pubs] == [False, True, False]


async def test_jsonb_variant_round_trips_json(make_node: Maker, db: asyncpg.Connection) -> None:
    broker, events = await make_node(binary_data=False)
    ch = "s:json"
    await broker.subscribe([ch])
    info = ClientInfo("u", "c", b'{"n":1}', None)
    await broker.publish(ch, b'{"a":[1,2]}', with_history(client_info=info, tags={"t": "1"}))
    pub = (await events.wait_pubs(ch, 1))[0]
    # PostgreSQL's normal form of the JSON, as Centrifugo hands it on.
    assert pub.data == b'{"a": [1, 2]}' and pub.tags == {"t": "1"}
    assert pub.info == ClientInfo("u", "c", b'{"n": 1}', None)
    assert await db.fetchval(f"SELECT data->>'a' FROM {broker.names.stream}") == "[1, 2]"
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, b"not json", HISTORY)
    assert e.value.code == ERROR_INTERNAL


# --- wake-ups, restart, schema ---


async def test_notify_wakes_the_readers(make_node: Maker) -> None:
    # Polling every 30 s: only the NOTIFY can deliver within the wait.
    a, events = await make_node(use_notify=True, poll_interval=30)
    b, _ = await make_node(poll_interval=30)
    await until("LISTEN", outbox(a).listening.is_set, 5)
    ch = "s:notify"
    await a.subscribe([ch])
    await b.publish(ch, b"x", HISTORY)
    assert (await events.wait_pubs(ch, 1, timeout=5))[0].data == b"x"


async def test_restart_keeps_history_and_delivery(
    make_node: Maker, pg: postgres.PostgresServer
) -> None:
    broker, events = await make_node(use_notify=True)
    ch = "s:restart"
    await broker.subscribe([ch])
    before = await broker.publish(ch, b"x", HISTORY)
    await events.wait_pubs(ch, 1)
    pg.stop()
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, b"y", HISTORY)
    assert e.value.code == ERROR_INTERNAL
    await until("unhealthy after stop", lambda: not broker.healthy, 5)
    pg.start()
    await until("healthy after restart", lambda: broker.healthy, 10)
    after = await broker.publish(ch, b"z", HISTORY)
    assert after.position == StreamPosition(2, before.position.epoch)
    pubs = await events.wait_pubs(ch, 2, timeout=10)
    assert [(p.data, p.offset) for p in pubs] == [(b"x", 1), (b"z", 2)]
    hist = await broker.history(ch, HistoryFilter(since=before.position, limit=-1))
    assert [p.data for p in hist.publications] == [b"z"]


async def test_start_while_postgres_is_away_heals(
    make_node: Maker, pg: postgres.PostgresServer
) -> None:
    # As the Redis engine: the node starts unhealthy and sets up once PostgreSQL answers.
    pg.stop()
    try:
        broker, events = await make_node()
        assert not broker.healthy
        with pytest.raises(ClientError) as e:
            await broker.publish("s:late", b"x", HISTORY)
        assert e.value.code == ERROR_INTERNAL
    finally:
        pg.start()
    await until("set up after PostgreSQL started", lambda: broker.healthy, 15)
    await broker.subscribe(["s:late"])
    result = await broker.publish("s:late", b"y", HISTORY)
    assert result.position.offset == 1
    assert (await events.wait_pubs("s:late", 1))[0].data == b"y"


async def test_schema_is_centrifugos(make_node: Maker, db: asyncpg.Connection, prefix: str) -> None:
    await make_node(num_shards=3, partition_lookahead_days=1)
    await make_node(num_shards=3, partition_lookahead_days=1)  # a second start: no-op
    tables = {
        r[0]
        for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{prefix}\\_%"
        )
    }
    today = dt.datetime.now(dt.UTC).date()
    days = [f"{d:%Y_%m_%d}" for d in (today, today + dt.timedelta(days=1))]
    for variant in ("stream", "binary_stream"):
        p = f"{prefix}_{variant}"
        for name in ("meta", "idempotency", "shard_lock", "schema_version"):
            assert f"{p}_{name}" in tables
        assert {f"{p}_{d}" for d in days} <= tables
        assert await db.fetchval(f"SELECT count(*) FROM {p}_shard_lock") == 3
        assert await db.fetchval(f"SELECT schema_version FROM {p}_schema_version") == 1
    functions = {
        r[0]
        for r in await db.fetch(
            "SELECT proname FROM pg_proc WHERE proname LIKE $1", f"{prefix}\\_%"
        )
    }
    for fn in ("publish", "publish_strict", "publish_join", "publish_leave"):
        assert f"{prefix}_stream_{fn}" in functions
    assert {f"{prefix}_stream_remove_history", f"{prefix}_stream_top_position"} <= functions


async def test_an_application_publishes_in_its_own_transaction(
    node: Node, db: asyncpg.Connection
) -> None:
    # The point of Centrifugo's PostgreSQL broker: a publication committed with the
    # application's own writes, by calling the function; nodes deliver it.
    broker, events = node
    ch = "s:app"
    await broker.subscribe([ch])
    async with db.transaction():
        row = await db.fetchrow(
            f"SELECT * FROM {broker.names.prefix}publish_strict($1, $2, "
            "p_history_ttl => interval '1 minute', p_history_size => 10)",
            ch,
            b"from-sql",
        )
    assert row["out_channel_offset"] == 1
    pub = (await events.wait_pubs(ch, 1))[0]
    assert (pub.data, pub.offset) == (b"from-sql", 1)
    top = await db.fetchrow(f"SELECT * FROM {broker.names.prefix}top_position($1)", ch)
    assert (top["out_top_offset"], top["out_epoch"]) == (1, row["out_epoch"])
