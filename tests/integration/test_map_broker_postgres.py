"""PostgresMapBroker (app/engines/postgres/) against a real PostgreSQL started by the tests
(tests/support/postgres.py): every write path of schema.sql's functions, reads, the
fan-out through the stream table to two brokers (two "nodes"), expiry of keys with a TTL as
removal publications, LISTEN/NOTIFY wake-ups, a PostgreSQL restart, and the schema itself
(Centrifugo's names, both variants, partitions).

One cluster per module; each test gets tables of its own (a table_prefix of its own).
Most tests store BYTEA (binary_data) so payloads are any bytes; the JSONB variant has its
own test. Expiry tests run the real loop with a small ttl_check_interval and await the
removal publication.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from app.engines.postgres import PostgresMapBroker
from app.engines.postgres.outbox import Outbox
from app.engines.postgres.schema import drop_old_partitions
from app.errors import ERROR_INTERNAL, ERROR_UNRECOVERABLE_POSITION, ClientError
from app.maps.broker import (
    KeyMode,
    MapChannelOptions,
    MapCurrentEntry,
    MapMode,
    MapPublishOptions,
    MapRemoveOptions,
)
from app.models import ClientInfo, Publication, StreamPosition
from tests.support import postgres
from tests.support.engine import EngineEvents, until

RECOVERABLE = MapChannelOptions(MapMode.RECOVERABLE, key_ttl=60, stream_size=100, stream_ttl=60)
PERSISTENT = MapChannelOptions(MapMode.PERSISTENT, stream_size=100, stream_ttl=60)
EPHEMERAL = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=60)
SHORT_TTL = MapChannelOptions(
    MapMode.RECOVERABLE, key_ttl=0.2, stream_size=100, stream_ttl=60, meta_ttl=600
)

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}"


Node = tuple[PostgresMapBroker, EngineEvents]
Maker = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_maps(pg: postgres.PostgresServer, prefix: str) -> AsyncIterator[Maker]:
    """`await make_maps(**broker_kw)` -> a running (broker, recorder): one node, on the
    test's tables. Expiry and cleanup are off unless asked for."""
    brokers: list[PostgresMapBroker] = []

    async def make(**kw: Any) -> tuple[PostgresMapBroker, EngineEvents]:
        kw.setdefault("table_prefix", prefix)
        kw.setdefault("binary_data", True)
        kw.setdefault("ttl_check_interval", 0)
        kw.setdefault("cleanup_interval", 0)
        kw.setdefault("poll_interval", 0.02)
        kw.setdefault("num_shards", 4)
        broker = PostgresMapBroker(pg.dsn, **kw)
        events = EngineEvents()
        brokers.append(broker)
        await broker.run(events)
        return broker, events

    yield make
    for b in reversed(brokers):
        await b.close()


@pytest.fixture
async def node(make_maps: Maker) -> tuple[PostgresMapBroker, EngineEvents]:
    return await make_maps()


@pytest.fixture
async def db(pg: postgres.PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn)
    yield conn
    await conn.close()


def outbox(broker: PostgresMapBroker) -> Outbox:
    assert broker.outbox is not None  # running
    return broker.outbox


def pub_view(pub: Publication) -> tuple[Any, ...]:
    return (pub.key, pub.offset, pub.data, pub.removed)


# --- publish, state, stream, delivery ---


async def test_publish_stores_state_and_stream_and_delivers(
    node: Node, db: asyncpg.Connection, prefix: str
) -> None:
    broker, events = node
    ch = "m:one"
    await broker.subscribe([ch])
    info = ClientInfo("u1", "c1", b'{"a":1}', None)
    first = await broker.publish(
        ch, "k1", MapPublishOptions(data=b'{"v":1}', tags={"t": "x"}, client_info=info), RECOVERABLE
    )
    second = await broker.publish(ch, "k2", MapPublishOptions(data=b"\x00\xff"), RECOVERABLE)
    epoch = first.position.epoch
    assert len(epoch) == 8 and first.position == StreamPosition(1, epoch)
    assert second.position == StreamPosition(2, epoch) and not second.suppressed

    pub, got_epoch = await events.next("pub", ch)
    assert got_epoch == epoch
    assert pub_view(pub) == ("k1", 1, b'{"v":1}', False)
    assert pub.tags == {"t": "x"} and pub.info == info and pub.time > 0
    assert pub.prev_data is None and not pub.delta
    pub, _ = await events.next("pub", ch)
    assert pub_view(pub) == ("k2", 2, b"\x00\xff", False)

    state = await broker.read_state(ch, RECOVERABLE)
    assert state.position == StreamPosition(2, epoch) and state.cursor == ""
    assert [(p.key, p.offset, p.data) for p in state.publications] == [
        ("k1", 1, b'{"v":1}'),
        ("k2", 2, b"\x00\xff"),
    ]
    assert state.publications[0].tags == {"t": "x"} and state.publications[0].info == info
    stream = await broker.read_stream(ch, RECOVERABLE)
    assert [pub_view(p) for p in stream.publications] == [
        ("k1", 1, b'{"v":1}', False),
        ("k2", 2, b"\x00\xff", False),
    ]
    assert stream.position == StreamPosition(2, epoch)
    assert await broker.stats(ch) == 2
    # Centrifugo's tables and columns, so both servers can share the database.
    meta = await db.fetchrow(f"SELECT top_offset, epoch FROM {prefix}_binary_map_meta")
    assert tuple(meta) == (2, epoch)
    rows = await db.fetch(
        f"SELECT channel_offset, key, removed FROM {prefix}_binary_map_stream ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [(1, "k1", False), (2, "k2", False)]


async def test_changes_reach_every_subscribed_node_once_in_order(make_maps: Maker) -> None:
    a, a_events = await make_maps()
    b, b_events = await make_maps()
    ch, other = "m:two-nodes", "m:not-subscribed"
    await b.subscribe([ch])
    await a.subscribe([ch])

    async def writes(n0: int) -> None:
        for i in range(n0, n0 + 20):
            writer = a if i % 2 else b
            if i % 5 == 4:
                await writer.remove(ch, f"k{i - 1}", MapRemoveOptions(), PERSISTENT)
            else:
                await writer.publish(ch, f"k{i}", MapPublishOptions(data=b"%d" % i), PERSISTENT)
            await writer.publish(other, "k", MapPublishOptions(data=b"o"), PERSISTENT)

    await writes(0)
    await asyncio.gather(*(writes(n) for n in (20, 40)))  # concurrent writers too
    for events in (a_events, b_events):
        pubs = await events.wait_pubs(ch, 60)
        assert [p.offset for p in pubs] == list(range(1, 61))
        assert events.pubs_in(other) == []
    await b.unsubscribe([ch])
    await a.publish(ch, "late", MapPublishOptions(data=b"late"), PERSISTENT)
    await a_events.wait_pubs(ch, 61)
    await outbox(a).read_once()  # b's reader has had its chance too
    await outbox(b).read_once()
    assert len(b_events.pubs_in(ch)) == 60
    assert len(a_events.pubs_in(ch)) == 61  # exactly once each


async def test_changes_committed_before_subscribe_are_not_delivered(make_maps: Maker) -> None:
    """A subscription delivers what is committed after it, as PUB/SUB does, even when the
    reader lags behind older rows (here: it reads only when asked)."""
    # No NOTIFY and no polling: only the test reads (two readers at once would both deliver).
    broker, events = await make_maps(poll_interval=3600, use_notify=False)
    ch = "m:late-subscriber"
    await broker.publish(ch, "old", MapPublishOptions(data=b"old"), EPHEMERAL)
    await broker.subscribe([ch])
    await broker.publish(ch, "new", MapPublishOptions(data=b"new"), EPHEMERAL)
    await outbox(broker).read_once()
    assert [p.key for p in events.pubs_in(ch)] == ["new"]


async def test_delta_publication_carries_the_previous_value(node: Node) -> None:
    broker, events = node
    ch = "m:delta"
    await broker.subscribe([ch])
    values = [b"a", b"ab", bytes(range(256)), b'{"x":"\\n"}']
    for value in values:
        await broker.publish(ch, "k", MapPublishOptions(data=value, delta=True), RECOVERABLE)
    await broker.publish(ch, "k", MapPublishOptions(data=b"plain"), RECOVERABLE)
    pubs = await events.wait_pubs(ch, len(values) + 1)
    assert pubs[0].prev_data is None  # a new key has no previous value
    for prev, pub, value in zip(values, pubs[1:], values[1:], strict=False):
        assert pub.delta and pub.prev_data == prev and pub.data == value
    plain = pubs[len(values)]
    assert not plain.delta and plain.prev_data is None
    stream = await broker.read_stream(ch, RECOVERABLE)
    assert not any(p.delta or p.prev_data for p in stream.publications)


async def test_remove_appends_and_delivers_a_removal(node: Node) -> None:
    broker, events = node
    ch = "m:remove"
    await broker.subscribe([ch])
    tags = {"g": '1/\u00fc \\ "q"', "n": "2"}
    await broker.publish(ch, "a", MapPublishOptions(data=b"1", tags=tags), RECOVERABLE)
    removed = await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    epoch = removed.position.epoch
    assert removed.position == StreamPosition(2, epoch) and not removed.suppressed
    absent = await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    assert absent.suppressed and absent.suppress_reason == "key_not_found"
    assert absent.position == StreamPosition(2, epoch)
    never = await broker.remove("m:never", "a", MapRemoveOptions(), RECOVERABLE)
    assert never.suppress_reason == "key_not_found"
    pubs = await events.wait_pubs(ch, 2)
    assert pub_view(pubs[1]) == ("a", 2, b"", True) and pubs[1].tags == tags
    state = await broker.read_state(ch, RECOVERABLE)
    assert state.publications == [] and state.position == StreamPosition(2, epoch)
    stream = await broker.read_stream(ch, RECOVERABLE, since=StreamPosition(1, epoch))
    assert [pub_view(p) for p in stream.publications] == [("a", 2, b"", True)]


# --- idempotency, version, key mode, CAS ---


async def test_idempotency_key_suppresses_a_repeat(node: Node) -> None:
    broker, events = node
    ch = "m:idem"
    await broker.subscribe([ch])
    first = await broker.publish(
        ch, "k", MapPublishOptions(data=b"x", idempotency_key="req-1"), RECOVERABLE
    )
    again = await broker.publish(
        ch, "k", MapPublishOptions(data=b"y", idempotency_key="req-1"), RECOVERABLE
    )
    assert again.suppressed and again.suppress_reason == "idempotency"
    assert again.position == first.position
    rm = MapRemoveOptions(idempotency_key="req-2")
    removed = await broker.remove(ch, "k", rm, RECOVERABLE)
    await broker.publish(ch, "k", MapPublishOptions(data=b"z"), RECOVERABLE)
    repeat = await broker.remove(ch, "k", rm, RECOVERABLE)
    assert repeat.suppressed and repeat.suppress_reason == "idempotency"
    assert repeat.position == removed.position
    pubs = await events.wait_pubs(ch, 3)
    assert [pub_view(p) for p in pubs] == [
        ("k", 1, b"x", False),
        ("k", 2, b"", True),
        ("k", 3, b"z", False),
    ]


async def test_idempotent_result_ttl_defaults_to_the_broker_one(
    make_maps: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    broker, _ = await make_maps(idempotent_result_ttl=30)
    ch = "m:idem-ttl"
    own = MapPublishOptions(data=b"x", idempotency_key="own", idempotent_result_ttl=5)
    await broker.publish(ch, "k", own, RECOVERABLE)
    zero = MapPublishOptions(data=b"x", idempotency_key="dflt", idempotent_result_ttl=0)
    await broker.publish(ch, "k", zero, RECOVERABLE)
    rows = await db.fetch(
        f"SELECT idempotency_key, extract(epoch FROM expires_at - now()) AS left "
        f"FROM {prefix}_binary_map_idempotency ORDER BY idempotency_key"
    )
    left = {r["idempotency_key"]: float(r["left"]) for r in rows}
    assert 25 < left["dflt"] <= 30 and 0 < left["own"] <= 5


async def test_per_key_version(node: Node) -> None:
    broker, _ = node
    ch = "m:version"

    async def write(key: str, version: int, epoch: str = "") -> str:
        opts = MapPublishOptions(data=b"%d" % version, version=version, version_epoch=epoch)
        return (await broker.publish(ch, key, opts, RECOVERABLE)).suppress_reason

    assert await write("a", 5) == ""
    assert await write("a", 5) == "version"
    assert await write("a", 4) == "version"
    assert await write("b", 1) == ""  # versions are per key
    assert await write("a", 6) == ""
    assert await write("a", 2, "other") == ""  # another version epoch starts over
    assert await write("a", 2, "other") == "version"
    await broker.publish(ch, "a", MapPublishOptions(data=b"plain"), RECOVERABLE)
    assert await write("a", 1, "other") == "version"  # an unversioned write keeps it
    await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    assert await write("a", 1, "other") == ""  # a removal forgets it
    state = await broker.read_state(ch, RECOVERABLE)
    assert {p.key: p.data for p in state.publications} == {"a": b"1", "b": b"1"}


async def test_key_modes(node: Node, db: asyncpg.Connection, prefix: str) -> None:
    broker, events = node
    ch = "m:modes"
    await broker.subscribe([ch])
    if_new = MapPublishOptions(data=b"first", key_mode=KeyMode.IF_NEW)
    assert not (await broker.publish(ch, "k", if_new, RECOVERABLE)).suppressed
    again = await broker.publish(ch, "k", if_new, RECOVERABLE)
    assert again.suppressed and again.suppress_reason == "key_exists"
    assert again.position.offset == 1
    missing = MapPublishOptions(data=b"x", key_mode=KeyMode.IF_EXISTS)
    result = await broker.publish(ch, "absent", missing, RECOVERABLE)
    assert result.suppressed and result.suppress_reason == "key_not_found"
    present = MapPublishOptions(data=b"updated", key_mode=KeyMode.IF_EXISTS)
    assert (await broker.publish(ch, "k", present, RECOVERABLE)).position.offset == 2

    expires = f"SELECT expires_at FROM {prefix}_binary_map_state WHERE key = 'k'"
    before = await db.fetchval(expires)
    await broker.publish(ch, "k", if_new, RECOVERABLE)
    assert await db.fetchval(expires) == before  # not refreshed without the flag
    refresh = MapPublishOptions(data=b"x", key_mode=KeyMode.IF_NEW, refresh_ttl_on_suppress=True)
    result = await broker.publish(ch, "k", refresh, RECOVERABLE)
    assert result.suppressed and result.suppress_reason == "key_exists"
    assert await db.fetchval(expires) > before  # a later transaction's now()
    state = await broker.read_state(ch, RECOVERABLE, key="k")
    assert state.publications[0].data == b"updated"
    await broker.publish(ch, "end", MapPublishOptions(data=b"e"), RECOVERABLE)
    pubs = await events.wait_pubs(ch, 3)
    assert [p.data for p in pubs] == [b"first", b"updated", b"e"]


async def test_compare_and_swap(node: Node) -> None:
    broker, _ = node
    ch = "m:cas"
    first = await broker.publish(ch, "k", MapPublishOptions(data=b"v1"), RECOVERABLE)
    epoch = first.position.epoch
    await broker.publish(ch, "other", MapPublishOptions(data=b"o"), RECOVERABLE)

    def cas(data: bytes, offset: int, ep: str = epoch) -> MapPublishOptions:
        return MapPublishOptions(data=data, expected_position=StreamPosition(offset, ep))

    ok = await broker.publish(ch, "k", cas(b"v2", 1), RECOVERABLE)
    assert not ok.suppressed and ok.position == StreamPosition(3, epoch)
    stale = await broker.publish(ch, "k", cas(b"v3", 1), RECOVERABLE)
    assert stale.suppressed and stale.suppress_reason == "position_mismatch"
    assert stale.position == StreamPosition(3, epoch)
    assert stale.current_entry == MapCurrentEntry(3, b"v2")
    wrong_epoch = await broker.publish(ch, "k", cas(b"v3", 3, "nope"), RECOVERABLE)
    assert wrong_epoch.suppress_reason == "position_mismatch"
    absent = await broker.publish(ch, "none", cas(b"x", 1), RECOVERABLE)
    assert absent.suppress_reason == "position_mismatch" and absent.current_entry is None
    rm_stale = MapRemoveOptions(expected_position=StreamPosition(1, epoch))
    result = await broker.remove(ch, "k", rm_stale, RECOVERABLE)
    assert result.suppress_reason == "position_mismatch"
    assert result.current_entry == MapCurrentEntry(3, b"v2")
    rm_ok = MapRemoveOptions(expected_position=StreamPosition(3, epoch))
    assert not (await broker.remove(ch, "k", rm_ok, RECOVERABLE)).suppressed
    with pytest.raises(ClientError) as e:
        await broker.publish(ch + "e", "k", cas(b"x", 1), EPHEMERAL)
    assert e.value.code == ERROR_INTERNAL  # centrifuge: a plain error, Centrifugo's 100


# --- reads ---


async def test_read_state_pages_by_key(node: Node) -> None:
    broker, _ = node
    ch = "m:pages"
    n = 120
    await asyncio.gather(
        *(
            broker.publish(ch, f"key{i:03}", MapPublishOptions(data=b"%d" % i), PERSISTENT)
            for i in range(n)
        )
    )
    keys: list[str] = []
    cursor, pages = "", 0
    while True:
        page = await broker.read_state(ch, PERSISTENT, cursor=cursor, limit=50)
        assert page.position.offset == n
        pages += 1
        keys += [p.key for p in page.publications]
        cursor = page.cursor
        if not cursor:
            break
    assert pages == 3 and keys == [f"key{i:03}" for i in range(n)]
    everything = await broker.read_state(ch, PERSISTENT)
    assert len(everything.publications) == n and everything.cursor == ""
    assert sorted(p.offset for p in everything.publications) == list(range(1, n + 1))
    position_only = await broker.read_state(ch, PERSISTENT, limit=0)
    assert position_only.publications == [] and position_only.position.offset == n
    one = await broker.read_state(ch, PERSISTENT, key="key007", cursor="123", limit=0)
    assert [(p.key, p.data) for p in one.publications] == [("key007", b"7")]
    none = await broker.read_state(ch, PERSISTENT, key="nope")
    assert none.publications == [] and none.position == everything.position
    ok = await broker.read_state(
        ch, PERSISTENT, limit=0, revision=StreamPosition(1, one.position.epoch)
    )
    assert ok.position == everything.position
    for kw in ({"limit": 10}, {"key": "key001"}, {"limit": 0}):
        with pytest.raises(ClientError) as e:
            await broker.read_state(ch, PERSISTENT, revision=StreamPosition(n, "other"), **kw)
        assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    with pytest.raises(ClientError) as e:
        await broker.read_state("m:new", PERSISTENT, revision=StreamPosition(3, "gone"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION


async def test_read_stream_since_limit_reverse(
    node: Node, db: asyncpg.Connection, prefix: str
) -> None:
    broker, _ = node
    ch = "m:stream"
    fresh = await broker.read_stream(ch, RECOVERABLE)
    epoch = fresh.position.epoch
    assert fresh.publications == [] and fresh.position.offset == 0 and len(epoch) == 8
    for i in range(1, 8):
        result = await broker.publish(ch, f"k{i}", MapPublishOptions(data=b"%d" % i), RECOVERABLE)
    assert result.position == StreamPosition(7, epoch)  # the read fixed the epoch

    async def offsets(**kw: Any) -> list[int]:
        return [p.offset for p in (await broker.read_stream(ch, RECOVERABLE, **kw)).publications]

    assert await offsets() == [1, 2, 3, 4, 5, 6, 7]
    assert await offsets(limit=3) == [1, 2, 3]
    assert await offsets(since=StreamPosition(4, epoch)) == [5, 6, 7]
    assert await offsets(since=StreamPosition(4, epoch), limit=2) == [5, 6]
    assert await offsets(since=StreamPosition(7, epoch)) == []
    assert await offsets(reverse=True) == [7, 6, 5, 4, 3, 2, 1]
    assert await offsets(reverse=True, limit=2) == [7, 6]
    assert await offsets(since=StreamPosition(4, epoch), reverse=True) == [3, 2, 1]
    assert await offsets(since=StreamPosition(0, ""), limit=2) == [1, 2]  # epoch "" unchecked
    assert await offsets(limit=0) == []
    with pytest.raises(ClientError) as e:
        await broker.read_stream(ch, RECOVERABLE, since=StreamPosition(3, "other"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    # Entries gone (a dropped partition): a reader behind them cannot catch up.
    await db.execute(
        f"DELETE FROM {prefix}_binary_map_stream WHERE channel_offset <= 3 AND channel = $1", ch
    )
    assert await offsets(since=StreamPosition(3, epoch)) == [4, 5, 6, 7]
    for since in (2, 0):
        with pytest.raises(ClientError) as e:
            await broker.read_stream(ch, RECOVERABLE, since=StreamPosition(since, epoch), limit=0)
        assert e.value.code == ERROR_UNRECOVERABLE_POSITION


async def test_clear_forgets_the_channel(node: Node) -> None:
    broker, events = node
    ch = "m:clear"
    await broker.subscribe([ch])
    old = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), RECOVERABLE)
    await events.wait_pubs(ch, 1)
    await broker.clear(ch)
    assert await broker.stats(ch) == 0
    new = await broker.publish(ch, "k2", MapPublishOptions(data=b"y"), RECOVERABLE)
    assert new.position.offset == 1 and new.position.epoch != old.position.epoch
    pubs = await events.wait_pubs(ch, 2)
    assert [p.key for p in pubs] == ["k", "k2"]  # the clear itself delivered nothing
    with pytest.raises(ClientError) as e:
        await broker.read_stream(ch, RECOVERABLE, since=old.position)
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION


async def test_state_outliving_its_meta_is_dropped(
    node: Node, db: asyncpg.Connection, prefix: str
) -> None:
    broker, _ = node
    ch = "m:zombie"
    old = await broker.publish(ch, "k", MapPublishOptions(data=b"old"), RECOVERABLE)
    await db.execute(f"DELETE FROM {prefix}_binary_map_meta WHERE channel = $1", ch)
    state = await broker.read_state(ch, RECOVERABLE)
    assert state.publications == [] and state.position.epoch != old.position.epoch
    result = await broker.publish(
        ch, "k", MapPublishOptions(data=b"new", key_mode=KeyMode.IF_NEW), RECOVERABLE
    )
    assert not result.suppressed and result.position == StreamPosition(1, state.position.epoch)


async def test_ephemeral_channel_has_no_positions(make_maps: Maker) -> None:
    broker, events = await make_maps(options_of=lambda ch: EPHEMERAL)
    ch = "m:eph"
    await broker.subscribe([ch])
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, "k", MapPublishOptions(data=b"x", version=3), EPHEMERAL)
    assert e.value.code == ERROR_INTERNAL
    result = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), EPHEMERAL)
    assert result.position == StreamPosition() and not result.suppressed
    await broker.publish(ch, "k", MapPublishOptions(data=b"y"), EPHEMERAL)
    pub, epoch = await events.next("pub", ch)
    assert (pub.key, pub.offset, pub.data, epoch) == ("k", 0, b"x", "")
    state = await broker.read_state(ch, EPHEMERAL, revision=StreamPosition())
    assert state.position == StreamPosition()
    assert [(p.key, p.offset, p.data) for p in state.publications] == [("k", 0, b"y")]
    assert (await broker.read_stream(ch, EPHEMERAL)).position == StreamPosition()
    removed = await broker.remove(ch, "k", MapRemoveOptions(), EPHEMERAL)
    assert removed.position == StreamPosition() and not removed.suppressed
    await events.next("pub", ch)
    pub, epoch = await events.next("pub", ch)
    assert (pub.key, pub.removed, pub.offset, epoch) == ("k", True, 0, "")


async def test_jsonb_variant_stores_json(
    make_maps: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    broker, events = await make_maps(binary_data=False)
    ch = "m:json"
    await broker.subscribe([ch])
    await broker.publish(ch, "k", MapPublishOptions(data=b'{"a": [1, 2]}'), RECOVERABLE)
    stored = await db.fetchval(f"SELECT data->'a'->>1 FROM {prefix}_map_state")
    assert stored == "2"  # queryable JSON, Centrifugo's default
    pub = (await events.wait_pubs(ch, 1))[0]
    assert pub.data == b'{"a": [1, 2]}'
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, "bad", MapPublishOptions(data=b"not json"), RECOVERABLE)
    assert e.value.code == ERROR_INTERNAL
    assert await broker.stats(ch) == 1


# --- expiry of keys ---


async def test_expired_key_is_removed_with_a_removal_publication(make_maps: Maker) -> None:
    # The expiring node and the subscribed node are different nodes.
    await make_maps(ttl_check_interval=0.05)
    reader, events = await make_maps()
    ch = "m:ttl"
    await reader.subscribe([ch])
    await reader.publish(ch, "short", MapPublishOptions(data=b"x", tags={"room": "1"}), SHORT_TTL)
    await reader.publish(ch, "long", MapPublishOptions(data=b"y"), RECOVERABLE)
    await events.wait_for(lambda: any(p.removed for p in events.pubs_in(ch)), timeout=5)
    pubs = events.pubs_in(ch)
    assert [pub_view(p) for p in pubs] == [
        ("short", 1, b"x", False),
        ("long", 2, b"y", False),
        ("short", 3, b"", True),
    ]
    assert pubs[2].tags == {"room": "1"}
    state = await reader.read_state(ch, RECOVERABLE)
    assert [p.key for p in state.publications] == ["long"]
    stream = await reader.read_stream(
        ch, RECOVERABLE, since=StreamPosition(2, state.position.epoch)
    )
    assert [pub_view(p) for p in stream.publications] == [("short", 3, b"", True)]


async def test_one_removal_when_nodes_race_for_an_expired_key(
    make_maps: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    nodes = [await make_maps() for _ in range(3)]
    broker, events = nodes[0]
    ch = "m:race"
    await broker.subscribe([ch])
    for i in range(20):
        await broker.publish(ch, f"k{i}", MapPublishOptions(data=b"x"), SHORT_TTL)
    await db.execute(f"UPDATE {prefix}_binary_map_state SET expires_at = now() - interval '1s'")
    counts = await asyncio.gather(*(b.maintenance.expire() for b, _ in nodes))
    assert sum(counts) == 20
    pubs = await events.wait_pubs(ch, 40)
    assert sorted(p.key for p in pubs if p.removed) == sorted(f"k{i}" for i in range(20))
    assert [p.offset for p in pubs] == list(range(1, 41))
    assert await broker.stats(ch) == 0


async def test_ephemeral_key_expires_too(make_maps: Maker) -> None:
    opts = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=0.1)
    broker, events = await make_maps(ttl_check_interval=0.05, options_of=lambda ch: opts)
    ch = "m:eph-ttl"
    await broker.subscribe([ch])
    await broker.publish(ch, "k", MapPublishOptions(data=b"x"), opts)
    await events.wait_for(lambda: len(events.pubs_in(ch)) == 2)
    removal = events.pubs_in(ch)[1]
    assert (removal.key, removal.removed, removal.offset) == ("k", True, 0)
    assert events.pubs[-1][2] == ""
    assert await broker.stats(ch) == 0


async def test_cleanup_drops_expired_meta_and_results(
    make_maps: Maker, db: asyncpg.Connection, prefix: str
) -> None:
    broker, _ = await make_maps()
    await broker.publish("m:a", "k", MapPublishOptions(data=b"x", idempotency_key="i"), SHORT_TTL)
    await broker.remove("m:a", "k", MapRemoveOptions(), SHORT_TTL)
    await db.execute(f"UPDATE {prefix}_binary_map_meta SET expires_at = now() - interval '1s'")
    await db.execute(
        f"UPDATE {prefix}_binary_map_idempotency SET expires_at = now() - interval '1s'"
    )
    await broker.maintenance.cleanup()
    assert await db.fetchval(f"SELECT count(*) FROM {prefix}_binary_map_meta") == 0
    assert await db.fetchval(f"SELECT count(*) FROM {prefix}_binary_map_idempotency") == 0


# --- wake-ups, restart, schema ---


async def test_notify_wakes_the_readers(make_maps: Maker) -> None:
    # Polling every 30 s: only the NOTIFY can deliver within the wait.
    broker, events = await make_maps(use_notify=True, poll_interval=30)
    other, _ = await make_maps(poll_interval=30)
    await until("LISTEN", outbox(broker).listening.is_set, 5)
    ch = "m:notify"
    await broker.subscribe([ch])
    await other.publish(ch, "k", MapPublishOptions(data=b"x"), RECOVERABLE)
    pub = (await events.wait_pubs(ch, 1, timeout=5))[0]
    assert pub.data == b"x"


async def test_restart_keeps_state_and_delivery(
    make_maps: Maker, pg: postgres.PostgresServer
) -> None:
    broker, events = await make_maps(use_notify=True)
    ch = "m:restart"
    await broker.subscribe([ch])
    before = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), PERSISTENT)
    await events.wait_pubs(ch, 1)
    pg.stop()
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, "k", MapPublishOptions(data=b"y"), PERSISTENT)
    assert e.value.code == ERROR_INTERNAL
    await until("unhealthy after stop", lambda: not broker.healthy, 5)
    pg.start()
    await until("healthy after restart", lambda: broker.healthy, 10)
    after = await broker.publish(ch, "k", MapPublishOptions(data=b"z"), PERSISTENT)
    # PostgreSQL keeps everything: same epoch, next offset, recovery possible.
    assert after.position == StreamPosition(2, before.position.epoch)
    pubs = await events.wait_pubs(ch, 2, timeout=10)
    assert (pubs[1].data, pubs[1].offset) == (b"z", 2)
    stream = await broker.read_stream(ch, PERSISTENT, since=before.position)
    assert [p.data for p in stream.publications] == [b"z"]
    await until("LISTEN again", outbox(broker).listening.is_set, 40)


async def test_listen_survives_a_connection_dying_under_its_set_up(
    make_maps: Maker, db: asyncpg.Connection
) -> None:
    """A LISTEN connection that PostgreSQL terminates while asyncpg sets it up raises
    InternalClientError ("another operation is in progress"), as seen when PostgreSQL restarted
    under it: the listen loop treats it as the connection failing and listens again (it ended
    for good once, leaving the node polling alone)."""
    broker, _ = await make_maps(use_notify=True)
    box = outbox(broker)
    await asyncio.wait_for(box.listening.wait(), 15)
    connect = box._notify_connect
    assert connect is not None
    failures = [asyncpg.InternalClientError("cannot switch to state 12; another operation (2)")]

    async def dying_once() -> Any:
        if failures:
            raise failures.pop()
        return await connect()

    box._notify_connect = dying_once
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
    )
    assert killed >= 1
    await until("LISTEN lost", lambda: not box.listening.is_set(), 10)
    await asyncio.wait_for(box.listening.wait(), 20)  # after the failed attempt's backoff
    assert not failures


async def test_schema_is_centrifugos(make_maps: Maker, db: asyncpg.Connection, prefix: str) -> None:
    await make_maps(num_shards=3, partition_lookahead_days=1)
    await make_maps(num_shards=3, partition_lookahead_days=1)  # a second start: no-op
    tables = {
        r[0]
        for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{prefix}\\_%"
        )
    }
    today = dt.datetime.now(dt.UTC).date()
    days = [f"{d:%Y_%m_%d}" for d in (today, today + dt.timedelta(days=1))]
    for variant in ("map", "binary_map"):
        p = f"{prefix}_{variant}_"
        for name in ("state", "meta", "idempotency", "shard_lock", "schema_version"):
            assert p + name in tables
        assert {f"{p}stream_{d}" for d in days} <= tables
        assert await db.fetchval(f"SELECT count(*) FROM {p}shard_lock") == 3
        assert await db.fetchval(f"SELECT schema_version FROM {p}schema_version") == 1
    stream = f"{prefix}_binary_map_stream"
    await db.execute(
        f"CREATE TABLE {stream}_2020_01_01 PARTITION OF {stream} "
        "FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00')"
    )
    assert await drop_old_partitions(db, stream, 7) == 1
    assert await drop_old_partitions(db, stream, 7) == 0
