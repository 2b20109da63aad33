"""Redis engine behind Sentinel: a master, a replica and one sentinel as redis-server processes.

The engine is given only the sentinel's address (`redis+sentinel://...?sentinel_master_name=`)
and must find the master through it, also after a failover.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.engines.redis import RedisBroker, RedisPresenceManager, create_redis_engine
from app.models import ClientInfo, HistoryFilter, PublishOptions, StreamPosition
from tests.support.engine import EngineEvents, redis_engine_config, until
from tests.support.redis_topologies import SentinelTopology

HISTORY = PublishOptions(history_size=10, history_ttl=60.0)

Engine = tuple[RedisBroker, RedisPresenceManager, EngineEvents]
EngineFactory = Callable[[SentinelTopology], Awaitable[Engine]]


@pytest.fixture
async def engines() -> AsyncIterator[EngineFactory]:
    """`await make(topology)` -> a running (broker, presence, events) over the sentinel."""
    prefix = "t" + uuid.uuid4().hex[:8]
    started: list[Engine] = []

    async def make(topo: SentinelTopology) -> Engine:
        # io_timeout also bounds broker.subscribe(): room for a reconnect after failover.
        rcfg = redis_engine_config(topo.address, prefix, io_timeout="10s")
        broker, presence = create_redis_engine(rcfg)
        events = EngineEvents()
        await broker.run_control(events)
        await broker.run(events)
        await until("broker healthy", lambda: broker.healthy, 5.0)
        started.append((broker, presence, events))
        return broker, presence, events

    yield make
    for broker, presence, _ in started:
        await presence.close()
        await broker.close()


async def test_sentinel_address_finds_the_master(
    engines: EngineFactory, redis_sentinel: SentinelTopology
) -> None:
    broker, presence, events = await engines(redis_sentinel)
    assert broker.shards[0].spec.kind == "sentinel"
    ch = "news:" + uuid.uuid4().hex[:6]
    await broker.subscribe([ch])
    for n in (1, 2, 3):
        res = await broker.publish(ch, b'{"n":%d}' % n, HISTORY)
        assert res.position.offset == n
        pub, epoch = await events.next("pub", ch)
        assert (pub.offset, pub.data, epoch) == (n, b'{"n":%d}' % n, res.position.epoch)
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert hist.position == StreamPosition(3, res.position.epoch)

    # The data is on the master the sentinel names (and replicated, never written elsewhere).
    master = redis_sentinel.current_master()
    assert master is redis_sentinel.master
    keys = broker.shards[0].keys
    assert keys is not None
    with master.client() as c:
        assert c.xlen(keys.stream(ch)) == 3
        assert c.hget(keys.meta(ch), "e").decode() == res.position.epoch
        assert c.info("replication")["role"] == "master"

    await presence.add_presence(ch, "c1", ClientInfo("u1", "c1"))
    assert await presence.presence(ch) == {"c1": ClientInfo("u1", "c1")}
    await broker.publish_join(ch, ClientInfo("u1", "c1"))
    assert await events.next("join", ch) == ClientInfo("u1", "c1")
    await broker.publish_control(b"ctl")
    assert await events.next("control") == b"ctl"


async def test_engine_follows_failover(
    engines: EngineFactory, fresh_redis_sentinel: SentinelTopology
) -> None:
    topo = fresh_redis_sentinel
    broker, presence, events = await engines(topo)
    other, _, other_events = await engines(topo)
    channels = [f"fo:{i}" for i in range(5)]
    await broker.subscribe(channels)
    epochs = {}
    for ch in channels:
        for n in (1, 2):
            res = await other.publish(ch, b"before-%d" % n, HISTORY)
            pub, epoch = await events.next("pub", ch)
            assert (pub.offset, pub.data, epoch) == (n, b"before-%d" % n, res.position.epoch)
        epochs[ch] = res.position.epoch

    # In a thread: the engine's event loop keeps running through the outage, as in a server.
    failover = asyncio.create_task(asyncio.to_thread(topo.kill_master_and_await_failover))
    await until("broker sees the master gone", lambda: not broker.healthy, 10.0)
    new_master = await failover
    assert new_master is topo.replica
    assert not topo.master.alive()

    # PUB/SUB (control and data connections) reconnects to the promoted replica...
    await until("broker healthy after failover", lambda: broker.healthy, 15.0)
    # ...and resubscribes every channel: subscribe() returns once Redis confirmed them again.
    await broker.subscribe(channels)
    with new_master.client() as c:
        subscribed = set(c.execute_command("PUBSUB SHARDCHANNELS", "*"))
    keys = broker.shards[0].keys
    assert keys is not None
    assert {keys.client_channel(ch).encode() for ch in channels} <= subscribed

    # Commands go to the new master; history replicated before the crash is intact, so the
    # stream continues at the next offset in the same epoch.
    for ch in channels:
        res = await other.publish(ch, b"after", HISTORY)
        assert res.position == StreamPosition(3, epochs[ch])
        pub, epoch = await events.next("pub", ch)
        assert (pub.offset, pub.data, epoch) == (3, b"after", epochs[ch])
        hist = await broker.history(ch, HistoryFilter(limit=-1))
        assert [p.data for p in hist.publications] == [b"before-1", b"before-2", b"after"]
    with new_master.client() as c:
        assert c.xlen(keys.stream(channels[0])) == 3

    await presence.add_presence(channels[0], "c9", ClientInfo("u9", "c9"))
    stats = await presence.presence_stats(channels[0])
    assert (stats.num_clients, stats.num_users) == (1, 1)

    await until("second node healthy", lambda: other.healthy, 15.0)
    await other.publish_control(b"after-failover", node_id=events.id)
    assert await events.next("control") == b"after-failover"
    assert other_events.pending("control") == []
