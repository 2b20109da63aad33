"""Client-side sharding over two standalone servers: jump hash placement, per-channel behaviour."""

from __future__ import annotations

import asyncio

import pytest

from app.engines.redis.keys import fnv64a, jump_hash
from app.models import ClientInfo, HistoryFilter, PresenceStats, PublishOptions, StreamPosition

from .conftest import url_of

HIST = PublishOptions(history_size=10, history_ttl=60)
CHANNELS = [f"chan.{i}" for i in range(100)]


def expected_shard(channel: str) -> int:
    return jump_hash(fnv64a(channel.encode()), 2)


@pytest.fixture
async def sharded(make_engine, redis_proc, redis_proc2, rdb, rdb2):
    broker, presence, rec = await make_engine([url_of(redis_proc), url_of(redis_proc2)])
    return broker, presence, rec, (rdb, rdb2)


async def test_channels_land_on_the_jump_hash_shard(sharded):
    broker, presence, _, dbs = sharded
    for ch in CHANNELS:
        assert broker.shard_for(ch).index == expected_shard(ch)
    await asyncio.gather(*(broker.publish(ch, b"x", HIST) for ch in CHANNELS))
    await asyncio.gather(
        *(presence.add_presence(ch, "c1", ClientInfo("u1", "c1")) for ch in CHANNELS)
    )
    per_shard = [set(await db.keys("*")) for db in dbs]
    counts = [0, 0]
    for ch in CHANNELS:
        home = expected_shard(ch)
        counts[home] += 1
        names = {
            f"centrifugo.stream.{ch}",
            f"centrifugo.stream.meta.{ch}",
            f"centrifugo.presence.data.{ch}",
            f"centrifugo.presence.expire.{ch}",
        }
        assert names <= per_shard[home], ch
        assert not names & per_shard[1 - home], ch
    assert min(counts) >= 30, counts  # both shards carry a fair share
    assert sum(len(keys) for keys in per_shard) == 6 * len(CHANNELS)


async def test_everything_works_per_channel(sharded):
    broker, presence, rec, dbs = sharded
    await broker.subscribe(CHANNELS)
    # Each server carries the sharded PUB/SUB channels of exactly its own channels.
    for i, db in enumerate(dbs):
        subscribed = set(await db.execute_command("PUBSUB", "SHARDCHANNELS"))
        assert subscribed == {
            f"centrifugo.client.{ch}" for ch in CHANNELS if expected_shard(ch) == i
        }
    for n in (1, 2):
        results = await asyncio.gather(*(broker.publish(ch, b"%d" % n, HIST) for ch in CHANNELS))
        assert {r.position.offset for r in results} == {n}
    await rec.wait_for(lambda: len(rec.pubs) == 2 * len(CHANNELS))
    for ch in CHANNELS:
        assert [(p.offset, p.data) for p in rec.pubs_in(ch)] == [(1, b"1"), (2, b"2")]
        h = await broker.history(ch, HistoryFilter(limit=-1))
        assert [p.offset for p in h.publications] == [1, 2]
        assert h.position.offset == 2
    # Idempotency, remove_history, join/leave and presence route to the same shard.
    ch = CHANNELS[7]
    opts = PublishOptions(10, 60, idempotency_key="k")
    again = await broker.publish(ch, b"k", opts)
    repeat = await broker.publish(ch, b"k", opts)
    assert repeat.suppressed and repeat.position == again.position == StreamPosition(
        3, again.position.epoch
    )
    await broker.remove_history(ch)
    assert (await broker.history(ch, HistoryFilter(limit=-1))).position == StreamPosition(
        3, again.position.epoch
    )
    await broker.publish_join(ch, ClientInfo("u", "c"))
    await rec.wait_for(lambda: rec.joins == [(ch, ClientInfo("u", "c"))])
    await presence.add_presence(ch, "c1", ClientInfo("u1", "c1"))
    await presence.add_presence(ch, "c2", ClientInfo("u1", "c2"))
    assert await presence.presence_stats(ch) == PresenceStats(2, 1)


async def test_control_over_two_shards(make_engine, redis_proc, redis_proc2, rdb, rdb2):
    addrs = [url_of(redis_proc), url_of(redis_proc2)]
    a, _, rec_a = await make_engine(addrs, node_id="a")
    b, _, rec_b = await make_engine(addrs, node_id="b")
    # Control channels are subscribed on every shard...
    for db in (rdb, rdb2):
        assert set(await db.pubsub_channels()) == {
            "centrifugo.control",
            "centrifugo.node.a",
            "centrifugo.node.b",
        }
    # ...and each message is published on one of them, so it arrives once.
    for i in range(4):
        await a.publish_control(b"all-%d" % i)
        await a.publish_control(b"b-%d" % i, "b")
    await rec_b.wait_for(lambda: len(rec_b.controls) == 8)
    await rec_a.wait_for(lambda: len(rec_a.controls) == 4)
    await a.publish_control(b"end")
    await rec_b.wait_for(lambda: b"end" in rec_b.controls)
    assert sorted(rec_b.controls) == sorted(
        [b"all-%d" % i for i in range(4)] + [b"b-%d" % i for i in range(4)] + [b"end"]
    )
    await rec_a.wait_for(lambda: b"end" in rec_a.controls)
    assert sorted(rec_a.controls) == [b"all-0", b"all-1", b"all-2", b"all-3", b"end"]
    assert a.healthy and b.healthy
