"""Redis engine on a real Redis Cluster of 3 masters (redis-server processes).

Every test runs twice: with a `redis+cluster://` address and with a plain `redis://` address of
one node, from which the engine must detect the cluster itself. Each test uses its own key
prefix, so tests sharing the session's cluster never see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from app.engines.redis import RedisBroker, RedisPresenceManager, create_redis_engine
from app.engines.redis.keys import CLUSTER_PARTITIONS, Keys
from app.models import (
    ClientInfo,
    HistoryFilter,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from tests.support.engine import EngineEvents, channels_in_partitions, redis_engine_config, until
from tests.support.redis_topologies import ClusterTopology, wait_for

HISTORY = PublishOptions(history_size=10, history_ttl=60.0)


@dataclass
class Engine:
    broker: RedisBroker
    presence: RedisPresenceManager
    events: EngineEvents
    prefix: str

    @property
    def keys(self) -> Keys:
        keys = self.broker.shards[0].keys
        assert keys is not None
        return keys


EngineFactory = Callable[[], Awaitable[Engine]]


@pytest.fixture(params=["redis+cluster", "redis"])
def address(request: pytest.FixtureRequest, redis_cluster: ClusterTopology) -> str:
    return (
        redis_cluster.address if request.param == "redis+cluster" else redis_cluster.plain_address
    )


@pytest.fixture
async def engines(address: str) -> AsyncIterator[EngineFactory]:
    """`await make()` -> a running engine (one "node"); all share this test's key prefix."""
    prefix = "t" + uuid.uuid4().hex[:8]
    started: list[Engine] = []

    async def make() -> Engine:
        broker, presence = create_redis_engine(redis_engine_config(address, prefix))
        events = EngineEvents()
        await broker.run_control(events)
        await broker.run(events)
        # run() returns once the control channels are confirmed; the connection flags itself
        # ready a moment later.
        await until("broker healthy", lambda: broker.healthy, 5.0)
        engine = Engine(broker, presence, events, prefix)
        started.append(engine)
        return engine

    yield make
    for e in started:
        await e.presence.close()
        await e.broker.close()


def slot(name: str | bytes) -> int:
    return key_slot(name.encode() if isinstance(name, str) else name)


# --------------------------------------------------------------------------------------------


async def test_engine_runs_in_cluster_mode(engines: EngineFactory) -> None:
    e = await engines()
    shard = e.broker.shards[0]
    assert shard.cluster is True  # also when the address was a plain redis:// one
    assert e.keys.cluster is True
    assert e.broker.healthy is True
    # Partition tags spread over the slot space (each in its own 1/16th).
    tags = e.keys.partition_tags
    assert len(tags) == CLUSTER_PARTITIONS
    for i, tag in enumerate(tags):
        assert i * 1024 <= slot(tag) < (i + 1) * 1024


async def test_publish_history_spread_over_all_masters(
    engines: EngineFactory, redis_cluster: ClusterTopology
) -> None:
    e = await engines()
    channels = channels_in_partitions("spread")
    assert {e.keys.partition(ch) for ch in channels} == set(range(CLUSTER_PARTITIONS))
    epochs: dict[str, str] = {}
    for ch in channels:
        for n in (1, 2, 3):
            res = await e.broker.publish(ch, b'{"ch":"%s","n":%d}' % (ch.encode(), n), HISTORY)
            assert res.suppressed is False
            assert res.position.offset == n
            if n == 1:
                assert len(res.position.epoch) == 8
                epochs[ch] = res.position.epoch
            assert res.position.epoch == epochs[ch]
    assert len(set(epochs.values())) == len(channels)  # one epoch per stream

    for ch in channels:
        hist = await e.broker.history(ch, HistoryFilter(limit=-1))
        assert hist.position == StreamPosition(3, epochs[ch])
        assert [(p.offset, p.data) for p in hist.publications] == [
            (n, b'{"ch":"%s","n":%d}' % (ch.encode(), n)) for n in (1, 2, 3)
        ]
        since = await e.broker.history(ch, HistoryFilter(since=StreamPosition(1, ""), limit=10))
        assert [p.offset for p in since.publications] == [2, 3]
        rev = await e.broker.history(ch, HistoryFilter(limit=2, reverse=True))
        assert [p.offset for p in rev.publications] == [3, 2]
        top = await e.broker.history(ch, HistoryFilter(limit=0))
        assert (top.publications, top.position) == ([], StreamPosition(3, epochs[ch]))

    # Where the keys are: a channel's stream, meta and PUB/SUB channel share one slot, and that
    # slot's master (and only it) stores the channel's keys.
    owners = redis_cluster.slot_owners()
    stored = redis_cluster.local_keys(f"{e.prefix}.stream.*")
    masters_used = set()
    for ch in channels:
        stream, meta = e.keys.stream(ch), e.keys.meta(ch)
        assert stream.startswith(f"{e.prefix}.stream.{{") and stream.endswith("}." + ch)
        assert slot(stream) == slot(meta) == slot(e.keys.client_channel(ch))
        owner = owners[slot(stream)]
        masters_used.add(owner)
        for port, keys in stored.items():
            held = {stream.encode(), meta.encode()} & keys
            assert held == ({stream.encode(), meta.encode()} if port == owner else set())
    assert masters_used == set(redis_cluster.ports)
    assert all(stored.values())  # every master holds streams of this test


async def test_publish_many_shares_script_calls_per_partition(engines: EngineFactory) -> None:
    """A batch over channels of every partition: each (shard, partition) gets its own
    history_add calls (a cluster refuses keys of two slots in one script), offsets count
    per channel in item order, and every channel gets its own epoch."""
    e = await engines()
    channels = channels_in_partitions("many")
    items = [
        (ch, b'{"ch":"%s","n":%d}' % (ch.encode(), n), HISTORY)
        for n in range(1, 61)
        for ch in channels
    ]
    results = await e.broker.publish_many(items)
    assert all(isinstance(r, PublishResult) for r in results), results[:3]
    for ch in channels:
        mine = [r for (c, _, _), r in zip(items, results, strict=True) if c == ch]
        assert [r.position.offset for r in mine] == list(range(1, 61))  # type: ignore[union-attr]
        hist = await e.broker.history(ch, HistoryFilter(limit=-1))
        assert [p.data for p in hist.publications] == [  # the last history_size of them
            b'{"ch":"%s","n":%d}' % (ch.encode(), n) for n in range(51, 61)
        ]
    epochs = {r.position.epoch for r in results}  # type: ignore[union-attr]
    assert len(epochs) > 1


async def test_idempotent_publish_and_remove_history(engines: EngineFactory) -> None:
    e = await engines()
    for ch in channels_in_partitions("idem")[:6]:
        opts = PublishOptions(history_size=10, history_ttl=60.0, idempotency_key="k1")
        first = await e.broker.publish(ch, b"1", opts)
        again = await e.broker.publish(ch, b"1-again", opts)
        assert first.position.offset == 1 and first.suppressed is False
        assert (again.position, again.suppressed) == (first.position, True)
        await e.broker.publish(ch, b"2", HISTORY)

        await e.broker.remove_history(ch)
        hist = await e.broker.history(ch, HistoryFilter(limit=-1))
        # Stored publications gone, meta kept: same epoch and top offset.
        assert (hist.publications, hist.position) == ([], StreamPosition(2, first.position.epoch))
        res = await e.broker.publish(ch, b"3", HISTORY)
        assert res.position == StreamPosition(3, first.position.epoch)


async def test_history_creates_meta_before_any_publish(engines: EngineFactory) -> None:
    e = await engines()
    for ch in channels_in_partitions("fresh")[:4]:
        hist = await e.broker.history(ch, HistoryFilter(limit=-1))
        assert hist.publications == [] and hist.position.offset == 0
        assert len(hist.position.epoch) == 8
        res = await e.broker.publish(ch, b"x", HISTORY)
        assert res.position == StreamPosition(1, hist.position.epoch)


async def test_sharded_pubsub_delivers_across_partitions(
    engines: EngineFactory, redis_cluster: ClusterTopology
) -> None:
    publisher = await engines()
    receiver = await engines()
    channels = channels_in_partitions("deliver")
    await receiver.broker.subscribe(channels)

    # Each channel is SSUBSCRIBEd on the master that owns its slot.
    owners = redis_cluster.slot_owners()
    subscribed = redis_cluster.local_shard_channels(f"{receiver.prefix}.client.*")
    for ch in channels:
        name = receiver.keys.client_channel(ch).encode()
        owner = owners[slot(name)]
        assert {p for p, names in subscribed.items() if name in names} == {owner}
    assert {p for p, names in subscribed.items() if names} == set(redis_cluster.ports)

    info = ClientInfo("u1", "c1", b'{"name":"U"}', b'{"chan":1}')
    for ch in channels:
        res = await publisher.broker.publish(
            ch, b"hist-" + ch.encode(), PublishOptions(10, 60.0, client_info=info, tags={"t": ch})
        )
        pub, epoch = await receiver.events.next("pub", ch)
        assert (pub.offset, epoch) == (res.position.offset, res.position.epoch) == (1, epoch)
        assert pub.data == b"hist-" + ch.encode()
        assert pub.info == info
        assert pub.tags == {"t": ch}
        # Without history: offset 0, no epoch.
        res = await publisher.broker.publish(ch, b"live", PublishOptions())
        assert res.position == StreamPosition()
        pub, epoch = await receiver.events.next("pub", ch)
        assert (pub.data, pub.offset, epoch) == (b"live", 0, "")

        await publisher.broker.publish_join(ch, info)
        assert await receiver.events.next("join", ch) == info
        await publisher.broker.publish_leave(ch, ClientInfo("u2", "c2"))
        assert await receiver.events.next("leave", ch) == ClientInfo("u2", "c2")

    # The publisher never subscribed, so it received nothing.
    for ch in channels:
        assert publisher.events.pending("pub", ch) == []

    # After unsubscribe no node is subscribed any more (SUNSUBSCRIBE is not awaited by the
    # broker, so wait for the cluster to report it).
    await receiver.broker.unsubscribe(channels)
    wait_for(
        "shard channels gone",
        lambda: not any(redis_cluster.local_shard_channels(f"{receiver.prefix}.client.*").values()),
    )
    # The publication must not arrive; a later one on a still-subscribed channel proves the
    # connection is alive and that ordering would have shown the first.
    probe = channels[0]
    await receiver.broker.subscribe([probe])
    for ch in channels[1:]:
        await publisher.broker.publish(ch, b"after-unsub", HISTORY)
    await publisher.broker.publish(probe, b"probe", HISTORY)
    pub, _ = await receiver.events.next("pub", probe)
    assert pub.data == b"probe"
    for ch in channels[1:]:
        assert receiver.events.pending("pub", ch) == []


async def test_presence_on_every_master(
    engines: EngineFactory, redis_cluster: ClusterTopology
) -> None:
    a = await engines()
    b = await engines()
    channels = channels_in_partitions("presence")
    owners = redis_cluster.slot_owners()
    for ch in channels:
        await a.presence.add_presence(ch, "c1", ClientInfo("alice", "c1", b'{"a":1}'))
        await b.presence.add_presence(ch, "c2", ClientInfo("bob", "c2"))
        await b.presence.add_presence(ch, "c3", ClientInfo("alice", "c3", None, b"[1]"))
        # Re-adding refreshes, it does not duplicate.
        await a.presence.add_presence(ch, "c1", ClientInfo("alice", "c1", b'{"a":1}'))
    presence_masters = set()
    for ch in channels:
        got = await b.presence.presence(ch)
        assert got == {
            "c1": ClientInfo("alice", "c1", b'{"a":1}'),
            "c2": ClientInfo("bob", "c2"),
            "c3": ClientInfo("alice", "c3", None, b"[1]"),
        }
        stats = await a.presence.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (3, 2)
        data_key = a.keys.presence_data(ch)
        assert slot(data_key) == slot(a.keys.presence_expire(ch)) == slot("{" + ch + "}")
        presence_masters.add(owners[slot(data_key)])

        await a.presence.remove_presence(ch, "c3", "alice")
        stats = await b.presence.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (2, 2)
        await a.presence.remove_presence(ch, "c1", "alice")
        assert set(await b.presence.presence(ch)) == {"c2"}
        stats = await b.presence.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (1, 1)
    # 16 channels hashed by name: with 3 masters they cannot all land on one.
    assert len(presence_masters) >= 2
    stored = redis_cluster.local_keys(f"{a.prefix}.presence.data.*")
    assert sum(len(v) for v in stored.values()) == len(channels)


async def test_control_messages_broadcast_and_unicast(engines: EngineFactory) -> None:
    a = await engines()
    b = await engines()
    await a.broker.publish_control(b"to-all")
    assert await a.events.next("control") == b"to-all"
    assert await b.events.next("control") == b"to-all"

    await a.broker.publish_control(b"to-b", node_id=b.events.id)
    assert await b.events.next("control") == b"to-b"
    # A later broadcast reaches a; had the unicast reached it, it would be queued before.
    await b.broker.publish_control(b"second")
    assert await a.events.next("control") == b"second"
    assert await b.events.next("control") == b"second"
    assert a.events.pending("control") == [] and b.events.pending("control") == []
