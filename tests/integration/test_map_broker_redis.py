"""RedisMapBroker (app/engines/redis/maps.py) against real redis-server processes: every write
path of lua/map_*.lua, reads, expiry of keys with a TTL, PUB/SUB between two brokers (two
"nodes"), a Redis restart (new epoch), two standalone shards and a Cluster.

Each broker is a node of its own (own shards, connections and PUB/SUB links), as two
workers would be. Expiry tests run the real cleanup loop (small `cleanup_interval`) and await
the removal publication; the race between nodes calls `expiry.sweep(now)` with a `now` past
every expiry, so no test waits for wall time to pass.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from redis.asyncio import Redis

from app.engines.redis.address import specs_from_config
from app.engines.redis.keys import fnv64a, jump_hash
from app.engines.redis.maps import RedisMapBroker
from app.engines.redis.shard import Shard
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
from tests.support import redis_binary
from tests.support.engine import EngineEvents, channels_in_partitions, until
from tests.support.redis_server import RedisProcess

from .conftest import engine_config, url_of

RECOVERABLE = MapChannelOptions(MapMode.RECOVERABLE, key_ttl=60, stream_size=100, stream_ttl=60)
PERSISTENT = MapChannelOptions(MapMode.PERSISTENT, stream_size=100, stream_ttl=60)
EPHEMERAL = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=60)
SHORT_TTL = MapChannelOptions(MapMode.RECOVERABLE, key_ttl=0.2, stream_size=100, stream_ttl=60)
FAR_FUTURE = 2**50  # unix ms past every expiry a test sets


@pytest.fixture(autouse=True)
def _redis_binary() -> None:
    redis_binary.require()


Maker = Callable[..., Awaitable[tuple[RedisMapBroker, EngineEvents]]]


@pytest.fixture
async def make_maps() -> AsyncIterator[Maker]:
    """`await make_maps(address, **broker_kw)` -> a running (broker, recorder): one node.
    `address` a URL or a list of them (one shard each); `prefix`, `redis` (RedisConfig
    options) and the broker's keyword arguments."""
    brokers: list[RedisMapBroker] = []

    async def make(
        address: str | Iterable[str],
        prefix: str = "centrifugo",
        redis: dict[str, Any] | None = None,
        **kw: Any,
    ) -> tuple[RedisMapBroker, EngineEvents]:
        rcfg = engine_config(address, prefix=prefix, **(redis or {}))
        kw.setdefault("cleanup_interval", 0)  # expiry tests turn it on
        shards = [Shard(spec, rcfg, i) for i, spec in enumerate(specs_from_config(rcfg, "map"))]
        broker = RedisMapBroker(shards, prefix=prefix, **kw)
        events = EngineEvents()
        brokers.append(broker)
        await broker.run(events)
        return broker, events

    yield make
    for b in reversed(brokers):
        await b.close()


@pytest.fixture
async def node(make_maps: Maker, redis_proc: RedisProcess, rdb: Redis) -> Any:
    return await make_maps(url_of(redis_proc))


def pub_view(pub: Publication) -> tuple[Any, ...]:
    return (pub.key, pub.offset, pub.data, pub.removed)


# --- publish, state, stream, delivery ---


async def test_publish_stores_state_and_stream_and_delivers(node, rdb):
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
    by_key = {p.key: p for p in state.publications}
    assert {k: (p.offset, p.data) for k, p in by_key.items()} == {
        "k1": (1, b'{"v":1}'),
        "k2": (2, b"\x00\xff"),
    }
    assert by_key["k1"].tags == {"t": "x"} and by_key["k1"].info == info

    stream = await broker.read_stream(ch, RECOVERABLE)
    assert [pub_view(p) for p in stream.publications] == [
        ("k1", 1, b'{"v":1}', False),
        ("k2", 2, b"\x00\xff", False),
    ]
    assert stream.position == StreamPosition(2, epoch)
    assert await broker.stats(ch) == 2

    # centrifuge's key layout under the broker's prefix
    assert set(await rdb.keys("*")) == {
        f"centrifugo:stream:{ch}",
        f"centrifugo:meta:{ch}",
        f"centrifugo:state:{ch}",
        f"centrifugo:state:expire:{ch}",
        f"centrifugo:state:meta:{ch}",
        "centrifugo:cleanup:channels",
    }
    assert await rdb.hget(f"centrifugo:meta:{ch}", "e") == epoch
    assert (await rdb.hget(f"centrifugo:state:{ch}", "k1")).startswith(f"1:{epoch}:")
    assert await rdb.execute_command("PUBSUB", "SHARDCHANNELS") == [f"centrifugo.client.{ch}"]


async def test_changes_reach_every_subscribed_node_in_order(make_maps, redis_proc, rdb):
    a, a_events = await make_maps(url_of(redis_proc))
    b, b_events = await make_maps(url_of(redis_proc))
    ch = "m:two-nodes"
    await b.subscribe([ch])
    await a.subscribe([ch])
    for i in range(20):
        writer = a if i % 2 else b
        if i % 5 == 4:
            await writer.remove(ch, f"k{i - 1}", MapRemoveOptions(), PERSISTENT)
        else:
            await writer.publish(ch, f"k{i}", MapPublishOptions(data=b"%d" % i), PERSISTENT)
    for events in (a_events, b_events):
        pubs = await events.wait_pubs(ch, 20)
        assert [p.offset for p in pubs] == list(range(1, 21))
        assert [p.removed for p in pubs] == [i % 5 == 4 for i in range(20)]
    await b.unsubscribe([ch])
    await a.publish(ch, "late", MapPublishOptions(data=b"late"), PERSISTENT)
    await a_events.wait_pubs(ch, 21)
    assert len(b_events.pubs_in(ch)) == 20


async def test_delta_publication_carries_the_previous_value(node):
    broker, events = node
    ch = "m:delta"
    await broker.subscribe([ch])
    # Binary values of every length mod 3 exercise the script's base64 padding.
    values = [b"", b"a", b"ab", b"abc", os.urandom(1000), os.urandom(1001), b'{"x":"\\n"}']
    for value in values:
        await broker.publish(ch, "k", MapPublishOptions(data=value, delta=True), RECOVERABLE)
    await broker.publish(ch, "k", MapPublishOptions(data=b"plain"), RECOVERABLE)
    await broker.publish(ch, "new", MapPublishOptions(data=b"n", delta=True), RECOVERABLE)
    pubs = await events.wait_pubs(ch, len(values) + 2)
    assert pubs[0].delta and pubs[0].prev_data is None  # a new key has no previous value
    for prev, pub, value in zip(values, pubs[1:], values[1:], strict=False):
        assert pub.delta and pub.prev_data == prev and pub.data == value
    plain = pubs[len(values)]
    assert not plain.delta and plain.prev_data is None
    assert pubs[-1].key == "new" and pubs[-1].prev_data is None
    # What is stored carries neither: reads never see a delta.
    state = await broker.read_state(ch, RECOVERABLE, key="k")
    assert state.publications[0].data == b"plain" and not state.publications[0].delta
    stream = await broker.read_stream(ch, RECOVERABLE)
    assert not any(p.delta or p.prev_data for p in stream.publications)
    assert base64.b64decode(base64.b64encode(values[4])) == pubs[5].prev_data


# --- remove ---


async def test_remove_appends_and_delivers_a_removal(node):
    broker, events = node
    ch = "m:remove"
    await broker.subscribe([ch])
    tags = {"g": '1/\u00fc \\ "q"', "n": "2"}  # spliced from the stored meta by the script
    await broker.publish(ch, "a", MapPublishOptions(data=b"1", tags=tags), RECOVERABLE)
    await broker.publish(ch, "b", MapPublishOptions(data=b"2", tags={"g": "2"}), RECOVERABLE)
    removed = await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    epoch = removed.position.epoch
    assert removed.position == StreamPosition(3, epoch) and not removed.suppressed
    explicit = await broker.remove(ch, "b", MapRemoveOptions(tags={"why": "x"}), RECOVERABLE)
    assert explicit.position.offset == 4
    absent = await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    assert absent.suppressed and absent.suppress_reason == "key_not_found"
    assert absent.position == StreamPosition(4, epoch)

    pubs = await events.wait_pubs(ch, 4)
    assert [pub_view(p) for p in pubs[2:]] == [("a", 3, b"", True), ("b", 4, b"", True)]
    assert pubs[2].tags == tags  # the removed entry's own tags by default
    assert pubs[3].tags == {"why": "x"}
    state = await broker.read_state(ch, RECOVERABLE)
    assert state.publications == [] and state.position == StreamPosition(4, epoch)
    stream = await broker.read_stream(ch, RECOVERABLE, since=StreamPosition(2, epoch))
    assert [pub_view(p) for p in stream.publications] == [("a", 3, b"", True), ("b", 4, b"", True)]
    assert await broker.stats(ch) == 0
    await broker.publish(ch, "c", MapPublishOptions(data=b"c"), RECOVERABLE)
    assert (await events.wait_pubs(ch, 5))[4].key == "c"  # nothing delivered for "absent"


# --- idempotency, version, key mode, CAS ---


async def test_idempotency_key_suppresses_a_repeat(node):
    broker, events = node
    ch = "m:idem"
    await broker.subscribe([ch])
    opts = MapPublishOptions(data=b"x", idempotency_key="req-1")
    first = await broker.publish(ch, "k", opts, RECOVERABLE)
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
    await broker.publish(ch, "end", MapPublishOptions(data=b"e"), RECOVERABLE)
    pubs = await events.wait_pubs(ch, 4)
    assert [pub_view(p) for p in pubs] == [
        ("k", 1, b"x", False),
        ("k", 2, b"", True),
        ("k", 3, b"z", False),
        ("end", 4, b"e", False),
    ]
    state = await broker.read_state(ch, RECOVERABLE, key="k")
    assert state.publications[0].data == b"z"


async def test_idempotent_result_ttl_defaults_to_the_broker_one(make_maps, redis_proc, rdb):
    broker, _ = await make_maps(url_of(redis_proc), idempotent_result_ttl=30)
    ch = "m:idem-ttl"
    own = MapPublishOptions(data=b"x", idempotency_key="own", idempotent_result_ttl=5)
    await broker.publish(ch, "k", own, RECOVERABLE)
    zero = MapPublishOptions(data=b"x", idempotency_key="dflt", idempotent_result_ttl=0)
    await broker.publish(ch, "k", zero, RECOVERABLE)
    assert 4000 < await rdb.pttl(f"centrifugo.result.{ch}.own") <= 5000
    assert 29000 < await rdb.pttl(f"centrifugo.result.{ch}.dflt") <= 30000


async def test_per_key_version(node):
    broker, _ = node
    ch = "m:version"

    async def write(key: str, version: int, epoch: str = "") -> str:
        opts = MapPublishOptions(data=b"%d" % version, version=version, version_epoch=epoch)
        result = await broker.publish(ch, key, opts, RECOVERABLE)
        return result.suppress_reason

    assert await write("a", 5) == ""
    assert await write("a", 5) == "version"
    assert await write("a", 4) == "version"
    assert await write("b", 1) == ""  # versions are per key
    assert await write("a", 6) == ""
    assert await write("a", 2, "other") == ""  # another version epoch starts over
    assert await write("a", 2, "other") == "version"
    # uint64 versions past 2^53 compare exactly
    assert await write("c", 2**63 + 1) == ""
    assert await write("c", 2**63) == "version"
    # An unversioned write keeps the stored version; a removal forgets it.
    await broker.publish(ch, "a", MapPublishOptions(data=b"plain"), RECOVERABLE)
    assert await write("a", 1, "other") == "version"
    await broker.remove(ch, "a", MapRemoveOptions(), RECOVERABLE)
    assert await write("a", 1, "other") == ""
    state = await broker.read_state(ch, RECOVERABLE)
    assert {p.key: p.data for p in state.publications} == {
        "a": b"1",
        "b": b"1",
        "c": b"%d" % (2**63 + 1),
    }


async def test_key_modes(node, rdb):
    broker, events = node
    ch = "m:modes"
    await broker.subscribe([ch])
    if_new = MapPublishOptions(data=b"first", key_mode=KeyMode.IF_NEW)
    assert not (await broker.publish(ch, "k", if_new, RECOVERABLE)).suppressed
    again = await broker.publish(
        ch, "k", MapPublishOptions(data=b"2", key_mode=KeyMode.IF_NEW), RECOVERABLE
    )
    assert again.suppressed and again.suppress_reason == "key_exists"
    assert again.position.offset == 1
    missing = MapPublishOptions(data=b"x", key_mode=KeyMode.IF_EXISTS)
    result = await broker.publish(ch, "absent", missing, RECOVERABLE)
    assert result.suppressed and result.suppress_reason == "key_not_found"
    present = MapPublishOptions(data=b"updated", key_mode=KeyMode.IF_EXISTS)
    assert (await broker.publish(ch, "k", present, RECOVERABLE)).position.offset == 2
    # A suppressed if_new may still extend the key's expiry (presence keep-alive).
    expire = f"centrifugo:state:expire:{ch}"
    before = await rdb.zscore(expire, "k")
    await asyncio.sleep(0.01)  # a later "now", not synchronisation
    plain = MapPublishOptions(data=b"x", key_mode=KeyMode.IF_NEW)
    await broker.publish(ch, "k", plain, RECOVERABLE)
    assert await rdb.zscore(expire, "k") == before  # not refreshed without the flag
    refresh = MapPublishOptions(data=b"x", key_mode=KeyMode.IF_NEW, refresh_ttl_on_suppress=True)
    result = await broker.publish(ch, "k", refresh, RECOVERABLE)
    assert result.suppressed and result.suppress_reason == "key_exists"
    assert await rdb.zscore(expire, "k") > before
    state = await broker.read_state(ch, RECOVERABLE, key="k")
    assert state.publications[0].data == b"updated"
    pubs = await events.wait_pubs(ch, 2)
    await broker.publish(ch, "end", MapPublishOptions(data=b"e"), RECOVERABLE)
    pubs = await events.wait_pubs(ch, 3)
    assert [p.data for p in pubs] == [b"first", b"updated", b"e"]


async def test_compare_and_swap(node):
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
    assert wrong_epoch.current_entry == MapCurrentEntry(3, b"v2")
    absent = await broker.publish(ch, "none", cas(b"x", 1), RECOVERABLE)
    assert absent.suppress_reason == "position_mismatch" and absent.current_entry is None
    # Removal under CAS.
    rm_stale = MapRemoveOptions(expected_position=StreamPosition(1, epoch))
    result = await broker.remove(ch, "k", rm_stale, RECOVERABLE)
    assert result.suppress_reason == "position_mismatch"
    assert result.current_entry == MapCurrentEntry(3, b"v2")
    rm_ok = MapRemoveOptions(expected_position=StreamPosition(3, epoch))
    assert not (await broker.remove(ch, "k", rm_ok, RECOVERABLE)).suppressed
    # Ephemeral channels have no positions to compare.
    with pytest.raises(ClientError) as e:
        await broker.publish(ch + "e", "k", cas(b"x", 1), EPHEMERAL)
    assert e.value.code == ERROR_INTERNAL  # centrifuge: a plain error, Centrifugo's 100


# --- stream size, ttls ---


async def test_stream_is_trimmed_and_expires(node, rdb):
    broker, _ = node
    ch = "m:trim"
    opts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=60, stream_size=3, stream_ttl=30, meta_ttl=120
    )
    for i in range(1, 6):
        result = await broker.publish(ch, f"k{i}", MapPublishOptions(data=b"%d" % i), opts)
    epoch = result.position.epoch
    stream = await broker.read_stream(ch, opts)
    assert [p.offset for p in stream.publications] == [3, 4, 5]
    # Since offset 2: entry 3 is the next, kept. Since 1: entry 2 is gone.
    since2 = await broker.read_stream(ch, opts, since=StreamPosition(2, epoch))
    assert [p.offset for p in since2.publications] == [3, 4, 5]
    with pytest.raises(ClientError) as e:
        await broker.read_stream(ch, opts, since=StreamPosition(1, epoch))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    assert 29000 < await rdb.pttl(f"centrifugo:stream:{ch}") <= 30000
    for name in ("meta", "state", "state:expire", "state:meta"):
        assert 119000 < await rdb.pttl(f"centrifugo:{name}:{ch}") <= 120000, name
    # meta_ttl 0: the channel's meta and state never expire
    await broker.publish("m:forever", "k", MapPublishOptions(data=b"x"), RECOVERABLE)
    for name in ("meta", "state", "state:meta"):
        assert await rdb.pttl(f"centrifugo:{name}:m:forever") == -1, name
    # A stream gone with its ttl while the meta stays: catch-up is not possible.
    await rdb.delete(f"centrifugo:stream:{ch}")
    with pytest.raises(ClientError):
        await broker.read_stream(ch, opts, since=StreamPosition(4, epoch))
    at_top = await broker.read_stream(ch, opts, since=StreamPosition(5, epoch))
    assert at_top.publications == [] and at_top.position == StreamPosition(5, epoch)


# --- reads ---


async def test_read_state_pages_with_a_cursor(node):
    broker, _ = node
    ch = "m:pages"
    # More than a listpack holds (512 entries by default), so HSCAN pages for real.
    n = 600
    await asyncio.gather(
        *(
            broker.publish(ch, f"key{i:03}", MapPublishOptions(data=b"%d" % i), PERSISTENT)
            for i in range(n)
        )
    )
    seen: dict[str, bytes] = {}
    cursor, pages = "", 0
    while True:
        page = await broker.read_state(ch, PERSISTENT, cursor=cursor, limit=50)
        assert page.position.offset == n
        pages += 1
        for p in page.publications:
            seen[p.key] = p.data
        cursor = page.cursor
        if not cursor:
            break
    assert pages > 2
    assert seen == {f"key{i:03}": b"%d" % i for i in range(n)}
    everything = await broker.read_state(ch, PERSISTENT)
    assert len(everything.publications) == n and everything.cursor == ""
    offsets = sorted(p.offset for p in everything.publications)
    assert offsets == list(range(1, n + 1))
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


async def test_read_stream_since_limit_reverse(node):
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
    assert await offsets(since=StreamPosition(1, epoch), reverse=True) == []
    assert await offsets(since=StreamPosition(0, ""), limit=2) == [1, 2]  # epoch "" unchecked
    assert await offsets(limit=0) == []
    with pytest.raises(ClientError) as e:
        await broker.read_stream(ch, RECOVERABLE, since=StreamPosition(3, "other"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION


async def test_clear_forgets_the_channel(node, rdb):
    broker, events = node
    ch = "m:clear"
    await broker.subscribe([ch])
    old = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), SHORT_TTL)
    await events.wait_pubs(ch, 1)
    await broker.clear(ch)
    assert await rdb.keys(f"*{ch}*") == []
    assert await rdb.zscore("centrifugo:cleanup:channels", ch) is None
    assert await broker.stats(ch) == 0
    new = await broker.publish(ch, "k2", MapPublishOptions(data=b"y"), RECOVERABLE)
    assert new.position.offset == 1 and new.position.epoch != old.position.epoch
    pubs = await events.wait_pubs(ch, 2)
    assert [p.key for p in pubs] == ["k", "k2"]  # the clear itself delivered nothing


async def test_state_outliving_its_meta_is_dropped(node, rdb):
    """centrifuge's epoch check: a state whose meta expired first belongs to a dead epoch;
    its keys neither show in reads nor suppress writes of the new epoch."""
    broker, _ = node
    ch = "m:zombie"
    old = await broker.publish(ch, "k", MapPublishOptions(data=b"old"), RECOVERABLE)
    await rdb.delete(f"centrifugo:meta:{ch}")
    state = await broker.read_state(ch, RECOVERABLE)
    assert state.publications == [] and state.position.epoch != old.position.epoch
    if_new = MapPublishOptions(data=b"new", key_mode=KeyMode.IF_NEW)
    result = await broker.publish(ch, "k", if_new, RECOVERABLE)
    assert not result.suppressed
    assert result.position == StreamPosition(1, state.position.epoch)
    state = await broker.read_state(ch, RECOVERABLE)
    assert [(p.key, p.data, p.offset) for p in state.publications] == [("k", b"new", 1)]


async def test_ephemeral_channel_has_state_but_no_stream(node, rdb):
    broker, events = node
    ch = "m:eph"
    await broker.subscribe([ch])
    # Versions need a stream: refused as centrifuge's broker does (Centrifugo's API: 100).
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, "k", MapPublishOptions(data=b"x", version=3), EPHEMERAL)
    assert e.value.code == ERROR_INTERNAL
    result = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), EPHEMERAL)
    assert result.position == StreamPosition() and not result.suppressed
    again = await broker.publish(ch, "k", MapPublishOptions(data=b"y"), EPHEMERAL)
    assert not again.suppressed
    pub, epoch = await events.next("pub", ch)
    assert (pub.key, pub.offset, pub.data, epoch) == ("k", 0, b"x", "")
    state = await broker.read_state(ch, EPHEMERAL)
    assert state.position == StreamPosition()
    assert [(p.key, p.offset, p.data) for p in state.publications] == [("k", 0, b"y")]
    assert (await broker.read_stream(ch, EPHEMERAL)).position == StreamPosition()
    removed = await broker.remove(ch, "k", MapRemoveOptions(), EPHEMERAL)
    assert removed.position == StreamPosition() and not removed.suppressed
    await events.next("pub", ch)
    pub, epoch = await events.next("pub", ch)
    assert (pub.key, pub.removed, pub.offset, epoch) == ("k", True, 0, "")
    assert set(await rdb.keys(f"*{ch}*")) <= {f"centrifugo:state:expire:{ch}"}


# --- expiry of keys ---


async def test_expired_key_is_removed_with_a_removal_publication(make_maps, redis_proc, rdb):
    # The expiring node and the subscribed node are different nodes.
    expirer, _ = await make_maps(url_of(redis_proc), cleanup_interval=0.05)
    reader, events = await make_maps(url_of(redis_proc))
    ch = "m:ttl"
    await reader.subscribe([ch])
    opts = MapPublishOptions(data=b"x", tags={"room": "1"})
    await reader.publish(ch, "short", opts, SHORT_TTL)
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
    # The channel's cleanup entry now names the remaining key's expiry.
    expire_at = await rdb.zscore(f"centrifugo:state:expire:{ch}", "long")
    assert await rdb.zscore("centrifugo:cleanup:channels", ch) == expire_at


async def test_refreshed_key_does_not_expire(make_maps, redis_proc, rdb):
    broker, events = await make_maps(url_of(redis_proc))
    ch = "m:refresh"
    await broker.subscribe([ch])
    await broker.publish(ch, "k", MapPublishOptions(data=b"x"), SHORT_TTL)
    found = await rdb.zscore(f"centrifugo:state:expire:{ch}", "k")
    # The expiry found the key at `found`; meanwhile it was written again with a new ttl.
    await broker.publish(ch, "k", MapPublishOptions(data=b"y"), RECOVERABLE)
    assert await broker.expiry.sweep(now=int(found)) == 0
    assert await broker.stats(ch) == 1
    assert await rdb.zscore("centrifugo:cleanup:channels", ch) == await rdb.zscore(
        f"centrifugo:state:expire:{ch}", "k"
    )


async def test_one_removal_when_nodes_race_for_an_expired_key(make_maps, redis_proc, rdb):
    nodes = [await make_maps(url_of(redis_proc), cleanup_batch_size=7) for _ in range(3)]
    broker, events = nodes[0]
    ch = "m:race"
    await broker.subscribe([ch])
    for i in range(20):  # several batches of 7
        await broker.publish(ch, f"k{i}", MapPublishOptions(data=b"x"), SHORT_TTL)
    counts = await asyncio.gather(*(b.expiry.sweep(now=FAR_FUTURE) for b, _ in nodes))
    assert sum(counts) == 20
    assert [await b.expiry.sweep(now=FAR_FUTURE) for b, _ in nodes] == [0, 0, 0]
    pubs = await events.wait_pubs(ch, 40)
    removals = [p for p in pubs if p.removed]
    assert sorted(p.key for p in removals) == sorted(f"k{i}" for i in range(20))
    assert [p.offset for p in pubs] == list(range(1, 41))
    assert await broker.stats(ch) == 0


async def test_ephemeral_key_expires_too(make_maps, redis_proc, rdb):
    broker, events = await make_maps(url_of(redis_proc), cleanup_interval=0.05)
    ch = "m:eph-ttl"
    await broker.subscribe([ch])
    opts = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=0.1)
    await broker.publish(ch, "k", MapPublishOptions(data=b"x"), opts)
    await events.wait_for(lambda: len(events.pubs_in(ch)) == 2)
    removal = events.pubs_in(ch)[1]
    assert (removal.key, removal.removed, removal.offset) == ("k", True, 0)
    assert events.pubs[-1][2] == ""
    assert await broker.stats(ch) == 0


# --- Redis away and back ---


async def test_restart_starts_a_new_epoch(make_maps, restart_proc):
    broker, events = await make_maps(
        url_of(restart_proc), redis={"io_timeout": "1s", "connect_timeout": "500ms"}
    )
    ch = "m:restart"
    await broker.subscribe([ch])
    before = await broker.publish(ch, "k", MapPublishOptions(data=b"x"), RECOVERABLE)
    await events.wait_pubs(ch, 1)
    assert broker.healthy
    restart_proc.stop()
    with pytest.raises(ClientError) as e:
        await broker.publish(ch, "k", MapPublishOptions(data=b"y"), RECOVERABLE)
    assert e.value.code == 100
    await until("unhealthy after stop", lambda: not broker.healthy, 5)
    restart_proc.start()  # no persistence: everything is gone
    await until("healthy after restart", lambda: broker.healthy, 10)
    with pytest.raises(ClientError) as e:
        await broker.read_stream(ch, RECOVERABLE, since=before.position)
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    with pytest.raises(ClientError) as e:
        await broker.read_state(ch, RECOVERABLE, revision=before.position)
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    after = await broker.publish(ch, "k", MapPublishOptions(data=b"z"), RECOVERABLE)
    assert after.position.offset == 1 and after.position.epoch != before.position.epoch
    pubs = await events.wait_pubs(ch, 2)
    assert (pubs[1].data, pubs[1].offset) == (b"z", 1)
    assert events.pubs[-1][2] == after.position.epoch


async def test_commands_fail_with_internal_error_while_redis_was_never_reached(make_maps):
    broker, _ = await make_maps("redis://127.0.0.1:1", redis={"connect_timeout": "100ms"})
    assert not broker.healthy
    for call in (
        broker.publish("m:x", "k", MapPublishOptions(data=b"x"), RECOVERABLE),
        broker.read_state("m:x", RECOVERABLE),
        broker.subscribe(["m:x"]),
    ):
        with pytest.raises(ClientError) as e:
            await call
        assert e.value.code == 100


# --- sharding ---


async def test_two_shards_place_channels_by_jump_hash(
    make_maps, redis_proc, redis_proc2, rdb, rdb2
):
    urls = [url_of(redis_proc), url_of(redis_proc2)]
    a, a_events = await make_maps(urls, cleanup_interval=0.05)
    b, b_events = await make_maps(urls)
    channels = [f"m:shard:{i}" for i in range(40)]
    await b.subscribe(channels)
    for ch in channels:
        await a.publish(ch, "k", MapPublishOptions(data=ch.encode()), RECOVERABLE)
        await a.publish(ch, "gone", MapPublishOptions(data=b"-"), SHORT_TTL)
    dbs = (rdb, rdb2)
    homes = [0, 0]
    for ch in channels:
        home = jump_hash(fnv64a(ch.encode()), 2)
        homes[home] += 1
        assert await dbs[home].exists(f"centrifugo:state:{ch}")
        assert not await dbs[1 - home].exists(f"centrifugo:state:{ch}")
    assert min(homes) >= 10, homes
    # Every channel's changes and the expiry of its short key arrive, on both shards.
    await b_events.wait_for(lambda: len(b_events.pubs) == 3 * len(channels), timeout=10)
    for ch in channels:
        assert [(p.key, p.removed) for p in b_events.pubs_in(ch)] == [
            ("k", False),
            ("gone", False),
            ("gone", True),
        ]
        state = await b.read_state(ch, RECOVERABLE)
        assert [(p.key, p.data) for p in state.publications] == [("k", ch.encode())]


# --- Cluster ---


async def test_cluster_keeps_a_channel_in_one_slot(make_maps, redis_cluster):
    prefix = "m" + uuid.uuid4().hex[:8]
    a, _ = await make_maps(redis_cluster.address, prefix=prefix, cleanup_interval=0.05)
    b, events = await make_maps(redis_cluster.address, prefix=prefix)
    channels = channels_in_partitions("m:cl")
    await b.subscribe(channels)
    for ch in channels:
        await a.publish(ch, "k", MapPublishOptions(data=b"v", idempotency_key="i"), RECOVERABLE)
        await a.publish(ch, "k", MapPublishOptions(data=b"w", delta=True), RECOVERABLE)
        await a.publish(ch, "gone", MapPublishOptions(data=b"-"), SHORT_TTL)
        await a.remove(ch, "k", MapRemoveOptions(), RECOVERABLE)
    await events.wait_for(lambda: len(events.pubs) == 5 * len(channels), timeout=10)
    for ch in channels:
        pubs = events.pubs_in(ch)
        assert [(p.key, p.offset, p.removed) for p in pubs] == [
            ("k", 1, False),
            ("k", 2, False),
            ("gone", 3, False),
            ("k", 4, True),
            ("gone", 5, True),
        ]
        assert pubs[1].prev_data == b"v"
        stream = await b.read_stream(ch, RECOVERABLE, since=StreamPosition(3, ""))
        assert [p.offset for p in stream.publications] == [4, 5]
        assert await b.stats(ch) == 0
        await b.clear(ch)


async def test_skip_pub_sub_stores_without_publishing(make_maps, redis_proc, rdb):
    quiet, _ = await make_maps(url_of(redis_proc), skip_pub_sub=True)
    loud, events = await make_maps(url_of(redis_proc))
    ch = "m:quiet"
    await loud.subscribe([ch])
    await quiet.publish(ch, "k", MapPublishOptions(data=b"x"), RECOVERABLE)
    await quiet.publish(ch, "t", MapPublishOptions(data=b"x"), SHORT_TTL)
    await quiet.remove(ch, "k", MapRemoveOptions(), RECOVERABLE)
    assert await quiet.expiry.sweep(now=FAR_FUTURE) == 1
    await loud.publish(ch, "end", MapPublishOptions(data=b"e"), RECOVERABLE)
    pubs = await events.wait_pubs(ch, 1)
    assert [(p.key, p.offset) for p in pubs] == [("end", 5)]
    stream = await quiet.read_stream(ch, RECOVERABLE)
    assert [(p.key, p.removed) for p in stream.publications] == [
        ("k", False),
        ("t", False),
        ("k", True),
        ("t", True),
        ("end", False),
    ]
