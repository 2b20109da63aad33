"""Memory engine: streams, epochs, expiry, idempotency, delivery and presence."""

from __future__ import annotations

import asyncio
import string

import pytest

from app.engines.memory import MemoryBroker, MemoryPresenceManager, generate_epoch
from app.models import (
    ClientInfo,
    HistoryFilter,
    PresenceStats,
    Publication,
    PublishOptions,
    StreamPosition,
)
from tests.support.engine import EngineEvents


class FakeClock:
    """Time the tests move by hand; `read` is set whenever someone reads the time."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.read = asyncio.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


HIST = PublishOptions(history_size=10, history_ttl=60.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def broker(clock: FakeClock):
    b = MemoryBroker(clock=clock, history_meta_ttl=3600.0)
    rec = EngineEvents()
    await b.run_control(rec)
    await b.run(rec)
    b.recorder = rec  # type: ignore[attr-defined]
    yield b
    await b.close()


async def publish_n(b: MemoryBroker, channel: str, n: int, opts: PublishOptions = HIST) -> None:
    for i in range(n):
        await b.publish(channel, b'{"i":%d}' % (i + 1), opts)


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


def test_epoch_is_eight_ascii_letters() -> None:
    epochs = {generate_epoch() for _ in range(50)}
    assert len(epochs) == 50
    for e in epochs:
        assert len(e) == 8
        assert set(e) <= set(string.ascii_letters)


async def test_offsets_start_at_one_and_keep_epoch(broker: MemoryBroker) -> None:
    r1 = await broker.publish("ch", b"1", HIST)
    r2 = await broker.publish("ch", b"2", HIST)
    r3 = await broker.publish("ch", b"3", HIST)
    assert [r1.position.offset, r2.position.offset, r3.position.offset] == [1, 2, 3]
    assert r1.position.epoch == r2.position.epoch == r3.position.epoch != ""
    assert not r1.suppressed
    other = await broker.publish("other", b"x", HIST)
    assert other.position.offset == 1
    assert other.position.epoch != r1.position.epoch


async def test_history_read_creates_meta_before_first_publish(broker: MemoryBroker) -> None:
    res = await broker.history("fresh", HistoryFilter(limit=-1))
    assert res.publications == []
    assert res.position.offset == 0
    assert len(res.position.epoch) == 8
    pub = await broker.publish("fresh", b"1", HIST)
    assert pub.position == StreamPosition(1, res.position.epoch)


async def test_publish_without_history(broker: MemoryBroker) -> None:
    rec: EngineEvents = broker.recorder  # type: ignore[attr-defined]
    for opts in (
        PublishOptions(),
        PublishOptions(history_size=10, history_ttl=0),
        PublishOptions(history_size=0, history_ttl=60),
    ):
        res = await broker.publish("nohist", b"x", opts)
        assert res.position == StreamPosition(0, "")
    assert [(c, p.offset, e) for c, p, e in rec.pubs] == [("nohist", 0, "")] * 3
    assert broker.num_streams == 0
    hist = await broker.history("nohist", HistoryFilter(limit=-1))
    assert hist.publications == [] and hist.position.offset == 0


async def test_handler_receives_publications_in_order(broker: MemoryBroker) -> None:
    rec: EngineEvents = broker.recorder  # type: ignore[attr-defined]
    info = ClientInfo(user="u1", client="c1", conn_info=b'{"a":1}')
    r = await broker.publish(
        "ch", b'{"x":1}', PublishOptions(10, 60.0, client_info=info, tags={"k": "v"}, delta=True)
    )
    await publish_n(broker, "ch", 3)
    assert [p.offset for _, p, _ in rec.pubs] == [1, 2, 3, 4]
    assert {e for _, _, e in rec.pubs} == {r.position.epoch}
    ch, first, _ = rec.pubs[0]
    assert ch == "ch"
    assert first.data == b'{"x":1}'
    assert first.info == info
    assert first.tags == {"k": "v"}
    assert first.delta is True
    assert rec.pubs[3][1].data == b'{"i":3}'


async def test_trim_by_size(broker: MemoryBroker) -> None:
    opts = PublishOptions(history_size=3, history_ttl=60.0)
    await publish_n(broker, "ch", 7, opts)
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert offsets(res.publications) == [5, 6, 7]
    assert [p.data for p in res.publications] == [b'{"i":5}', b'{"i":6}', b'{"i":7}']
    assert res.position.offset == 7


async def test_history_ttl_is_inactivity_ttl(broker: MemoryBroker, clock: FakeClock) -> None:
    opts = PublishOptions(history_size=10, history_ttl=5.0)
    first = await broker.publish("ch", b"1", opts)
    clock.advance(4)
    await broker.publish("ch", b"2", opts)
    clock.advance(4)  # 8s after the first publish, 4s after the last one
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert offsets(res.publications) == [1, 2]
    clock.advance(1.5)  # 5.5s after the last publish: items gone, meta stays
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert res.publications == []
    assert res.position == StreamPosition(2, first.position.epoch)
    again = await broker.publish("ch", b"3", opts)
    assert again.position == StreamPosition(3, first.position.epoch)


async def test_meta_expiry_gives_new_epoch(broker: MemoryBroker, clock: FakeClock) -> None:
    opts = PublishOptions(history_size=10, history_ttl=1.0, history_meta_ttl=10.0)
    r = await broker.publish("ch", b"1", opts)
    await broker.publish("ch", b"2", opts)
    clock.advance(9)
    # Each read refreshes the meta TTL, so the stream survives well past 10s.
    res = await broker.history("ch", HistoryFilter(limit=0, meta_ttl=10.0))
    assert res.position == StreamPosition(2, r.position.epoch)
    clock.advance(9)
    res = await broker.history("ch", HistoryFilter(limit=0, meta_ttl=10.0))
    assert res.position == StreamPosition(2, r.position.epoch)
    clock.advance(10.5)
    fresh = await broker.publish("ch", b"3", opts)
    assert fresh.position.offset == 1
    assert fresh.position.epoch != r.position.epoch


async def test_meta_expiry_on_history_read(broker: MemoryBroker, clock: FakeClock) -> None:
    r = await broker.publish("ch", b"1", PublishOptions(5, 1.0, history_meta_ttl=2.0))
    clock.advance(3)
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert res.position.offset == 0
    assert res.position.epoch not in ("", r.position.epoch)
    assert res.publications == []


async def test_default_meta_ttl_applies_when_zero(clock: FakeClock) -> None:
    b = MemoryBroker(clock=clock, history_meta_ttl=100.0)
    r = await b.publish("ch", b"1", PublishOptions(5, 10.0))
    clock.advance(99)
    assert (await b.history("ch", HistoryFilter())).position.epoch == r.position.epoch
    clock.advance(100.5)
    assert (await b.history("ch", HistoryFilter())).position.epoch != r.position.epoch
    await b.close()


async def test_engine_default_meta_ttl_is_720h(clock: FakeClock) -> None:
    b = MemoryBroker(clock=clock)
    r = await b.publish("ch", b"1", PublishOptions(5, 10.0))
    clock.advance(720 * 3600 - 10)
    assert (await b.history("ch", HistoryFilter())).position == r.position
    clock.advance(720 * 3600 + 1)
    assert (await b.history("ch", HistoryFilter())).position.epoch != r.position.epoch


async def test_history_forward_since_and_limit(broker: MemoryBroker) -> None:
    await publish_n(broker, "ch", 10)
    epoch = (await broker.history("ch", HistoryFilter())).position.epoch

    async def get(**kw) -> list[int]:
        res = await broker.history("ch", HistoryFilter(**kw))
        assert res.position == StreamPosition(10, epoch)
        return offsets(res.publications)

    assert await get(limit=0) == []
    assert await get(limit=-1) == list(range(1, 11))
    assert await get(limit=3) == [1, 2, 3]
    assert await get(limit=100) == list(range(1, 11))
    assert await get(limit=-1, since=StreamPosition(4, epoch)) == [5, 6, 7, 8, 9, 10]
    assert await get(limit=2, since=StreamPosition(4, epoch)) == [5, 6]
    assert await get(limit=0, since=StreamPosition(4, epoch)) == []
    assert await get(limit=-1, since=StreamPosition(0, epoch)) == list(range(1, 11))
    assert await get(limit=-1, since=StreamPosition(10, epoch)) == []
    assert await get(limit=-1, since=StreamPosition(15, epoch)) == []


async def test_history_reverse(broker: MemoryBroker) -> None:
    await publish_n(broker, "ch", 10)

    async def get(**kw) -> list[int]:
        res = await broker.history("ch", HistoryFilter(reverse=True, **kw))
        assert res.position.offset == 10
        return offsets(res.publications)

    assert await get(limit=-1) == list(range(10, 0, -1))
    assert await get(limit=3) == [10, 9, 8]
    assert await get(limit=0) == []
    assert await get(limit=-1, since=StreamPosition(5)) == [4, 3, 2, 1]
    assert await get(limit=2, since=StreamPosition(5)) == [4, 3]
    assert await get(limit=-1, since=StreamPosition(1)) == []
    assert await get(limit=-1, since=StreamPosition(11)) == list(range(10, 0, -1))
    assert await get(limit=-1, since=StreamPosition(100)) == list(range(10, 0, -1))


async def test_history_since_with_trimmed_stream(broker: MemoryBroker) -> None:
    await publish_n(broker, "ch", 12, PublishOptions(history_size=5, history_ttl=60.0))
    # The stream holds 8..12.
    res = await broker.history("ch", HistoryFilter(limit=-1, since=StreamPosition(3)))
    assert offsets(res.publications) == [8, 9, 10, 11, 12]
    res = await broker.history("ch", HistoryFilter(limit=2, since=StreamPosition(9)))
    assert offsets(res.publications) == [10, 11]
    res = await broker.history(
        "ch", HistoryFilter(limit=-1, since=StreamPosition(10), reverse=True)
    )
    assert offsets(res.publications) == [9, 8]
    res = await broker.history("ch", HistoryFilter(limit=-1, since=StreamPosition(8), reverse=True))
    assert res.publications == []
    res = await broker.history("ch", HistoryFilter(limit=2, reverse=True))
    assert offsets(res.publications) == [12, 11]


async def test_history_returns_copies(broker: MemoryBroker) -> None:
    await publish_n(broker, "ch", 1)
    res = await broker.history("ch", HistoryFilter(limit=-1))
    res.publications[0].data = b"mutated"
    res.publications[0].offset = 99
    again = await broker.history("ch", HistoryFilter(limit=-1))
    assert again.publications[0].data == b'{"i":1}'
    assert again.publications[0].offset == 1


async def test_remove_history_keeps_position(broker: MemoryBroker) -> None:
    await publish_n(broker, "ch", 4)
    before = (await broker.history("ch", HistoryFilter())).position
    await broker.remove_history("ch")
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert res.publications == []
    assert res.position == before == StreamPosition(4, before.epoch)
    nxt = await broker.publish("ch", b"5", HIST)
    assert nxt.position == StreamPosition(5, before.epoch)
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert offsets(res.publications) == [5]
    await broker.remove_history("never-used")  # no error, nothing created
    assert broker.num_streams == 1


async def test_idempotency_with_history(broker: MemoryBroker, clock: FakeClock) -> None:
    rec: EngineEvents = broker.recorder  # type: ignore[attr-defined]
    opts = PublishOptions(10, 60.0, idempotency_key="k1", idempotent_result_ttl=30.0)
    first = await broker.publish("ch", b"a", opts)
    dup = await broker.publish("ch", b"b", opts)
    assert dup.suppressed is True
    assert dup.position == first.position == StreamPosition(1, first.position.epoch)
    assert len(rec.pubs) == 1
    # Same key in another channel is independent.
    other = await broker.publish("other", b"a", opts)
    assert not other.suppressed and other.position.offset == 1
    # Another key in the same channel publishes.
    k2 = await broker.publish("ch", b"c", PublishOptions(10, 60.0, idempotency_key="k2"))
    assert not k2.suppressed and k2.position.offset == 2
    res = await broker.history("ch", HistoryFilter(limit=-1))
    assert [p.data for p in res.publications] == [b"a", b"c"]
    # After the window the key publishes again.
    clock.advance(31)
    again = await broker.publish("ch", b"d", opts)
    assert not again.suppressed and again.position.offset == 3
    assert len(rec.pubs) == 4


async def test_idempotency_without_history(broker: MemoryBroker) -> None:
    rec: EngineEvents = broker.recorder  # type: ignore[attr-defined]
    opts = PublishOptions(idempotency_key="k")
    first = await broker.publish("ch", b"a", opts)
    dup = await broker.publish("ch", b"a", opts)
    assert not first.suppressed and dup.suppressed
    assert dup.position == StreamPosition(0, "")
    assert len(rec.pubs) == 1


async def test_idempotency_default_window(broker: MemoryBroker, clock: FakeClock) -> None:
    opts = PublishOptions(idempotency_key="k", idempotent_result_ttl=0)
    await broker.publish("ch", b"a", opts)
    clock.advance(299)
    assert (await broker.publish("ch", b"a", opts)).suppressed
    clock.advance(2)
    assert not (await broker.publish("ch", b"a", opts)).suppressed


async def test_join_leave_control(broker: MemoryBroker) -> None:
    rec: EngineEvents = broker.recorder  # type: ignore[attr-defined]
    info = ClientInfo(user="u", client="c")
    await broker.publish_join("ch", info)
    await broker.publish_leave("ch", info)
    await broker.publish_control(b"ctl-all")
    await broker.publish_control(b"ctl-one", node_id="some-node")
    assert rec.joins == [("ch", info)]
    assert rec.leaves == [("ch", info)]
    assert rec.controls == [b"ctl-all", b"ctl-one"]


async def test_subscribe_tracks_channels(broker: MemoryBroker) -> None:
    await broker.subscribe(["a", "b"])
    await broker.subscribe(["b", "c"])
    await broker.unsubscribe(["a", "zzz"])
    assert broker.subscribed_channels == frozenset({"b", "c"})


async def test_publish_before_run_stores_without_delivery(clock: FakeClock) -> None:
    b = MemoryBroker(clock=clock)
    r = await b.publish("ch", b"x", HIST)
    assert r.position.offset == 1
    rec = EngineEvents()
    await b.run(rec)
    await b.publish("ch", b"y", HIST)
    assert [p.offset for _, p, _ in rec.pubs] == [2]
    await b.close()
    await b.publish_join("ch", ClientInfo("u", "c"))
    assert rec.joins == []


async def test_handler_error_does_not_fail_publish(clock: FakeClock) -> None:
    class Broken(EngineEvents):
        def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
            raise RuntimeError("boom")

    b = MemoryBroker(clock=clock)
    await b.run(Broken())
    r = await b.publish("ch", b"x", HIST)
    assert r.position.offset == 1
    res = await b.history("ch", HistoryFilter(limit=-1))
    assert offsets(res.publications) == [1]
    await b.close()


async def test_cleanup_drops_expired_state(broker: MemoryBroker, clock: FakeClock) -> None:
    await broker.publish("short", b"1", PublishOptions(5, 1.0, history_meta_ttl=10.0))
    await broker.publish("long", b"1", PublishOptions(5, 100.0, history_meta_ttl=1000.0))
    await broker.publish("ch", b"1", PublishOptions(idempotency_key="k", idempotent_result_ttl=5))
    assert broker.num_streams == 2
    clock.advance(2)
    broker.cleanup()
    assert broker.num_streams == 2
    assert len(broker._streams["short"].items) == 0
    assert len(broker._streams["long"].items) == 1
    clock.advance(10)
    broker.cleanup()
    assert broker.num_streams == 1 and "long" in broker._streams
    assert broker._results == {}


async def test_cleanup_reschedules_touched_streams(broker: MemoryBroker, clock: FakeClock) -> None:
    opts = PublishOptions(5, 1.0, history_meta_ttl=10.0)
    r = await broker.publish("ch", b"1", opts)
    for _ in range(5):
        clock.advance(8)
        await broker.history("ch", HistoryFilter(meta_ttl=10.0))
        broker.cleanup()
    assert broker.num_streams == 1
    assert (await broker.history("ch", HistoryFilter())).position == r.position
    # The expiry heaps hold one entry per key however often it is touched.
    assert len(broker._meta_expiry._heap) == 1


async def test_periodic_cleanup_runs_and_close_stops_it(clock: FakeClock) -> None:
    b = MemoryBroker(clock=clock, cleanup_interval=0.005)
    await b.run(EngineEvents())
    await b.publish("ch", b"1", PublishOptions(5, 1.0, history_meta_ttl=2.0))
    clock.advance(3)
    # Only the periodic sweep reads the clock from here on; it runs synchronously
    # after reading it, so once we are woken up the sweep has finished.
    clock.read.clear()
    await asyncio.wait_for(clock.read.wait(), 5)
    assert b.num_streams == 0
    task = b._cleanup_task
    assert task is not None and not task.done()
    await b.close()
    assert task.cancelled()


# -- presence -----------------------------------------------------------------


async def test_presence_add_refresh_remove(clock: FakeClock) -> None:
    pm = MemoryPresenceManager(presence_ttl=60.0, clock=clock)
    a = ClientInfo(user="u1", client="c1", conn_info=b"{}")
    b = ClientInfo(user="u1", client="c2")
    c = ClientInfo(user="u2", client="c3")
    assert await pm.presence("ch") == {}
    assert await pm.presence_stats("ch") == PresenceStats(0, 0)
    for info in (a, b, c):
        await pm.add_presence("ch", info.client, info)
    assert await pm.presence("ch") == {"c1": a, "c2": b, "c3": c}
    stats = await pm.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (3, 2)
    # Refresh replaces the info too.
    a2 = ClientInfo(user="u1", client="c1", chan_info=b'{"x":1}')
    await pm.add_presence("ch", "c1", a2)
    assert (await pm.presence("ch"))["c1"] == a2
    await pm.remove_presence("ch", "c2", "u1")
    await pm.remove_presence("ch", "missing", "u1")
    await pm.remove_presence("nochannel", "c1", "u1")
    assert set(await pm.presence("ch")) == {"c1", "c3"}
    await pm.remove_presence("ch", "c1", "u1")
    await pm.remove_presence("ch", "c3", "u2")
    assert await pm.presence("ch") == {}
    assert pm.num_channels == 0
    await pm.close()


async def test_presence_expiry_and_refresh(clock: FakeClock) -> None:
    pm = MemoryPresenceManager(presence_ttl=10.0, clock=clock)
    await pm.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await pm.add_presence("ch", "c2", ClientInfo("u2", "c2"))
    clock.advance(8)
    await pm.add_presence("ch", "c1", ClientInfo("u1", "c1"))  # refresh c1 only
    clock.advance(3)
    assert set(await pm.presence("ch")) == {"c1"}
    stats = await pm.presence_stats("ch")
    assert (stats.num_clients, stats.num_users) == (1, 1)
    clock.advance(8)
    assert await pm.presence("ch") == {}
    await pm.close()


async def test_presence_channels_are_separate_and_stats_count_anonymous(
    clock: FakeClock,
) -> None:
    pm = MemoryPresenceManager(clock=clock)
    await pm.add_presence("a", "c1", ClientInfo("", "c1"))
    await pm.add_presence("a", "c2", ClientInfo("", "c2"))
    await pm.add_presence("b", "c1", ClientInfo("", "c1"))
    sa = await pm.presence_stats("a")
    sb = await pm.presence_stats("b")
    assert (sa.num_clients, sa.num_users) == (2, 1)
    assert (sb.num_clients, sb.num_users) == (1, 1)
    await pm.close()


async def test_presence_cleanup_sweeps_unread_channels(clock: FakeClock) -> None:
    pm = MemoryPresenceManager(presence_ttl=5.0, clock=clock, cleanup_interval=0.005)
    await pm.add_presence("x", "c1", ClientInfo("u", "c1"))
    await pm.add_presence("y", "c2", ClientInfo("u", "c2"))
    assert pm.num_channels == 2
    clock.advance(6)
    clock.read.clear()
    await asyncio.wait_for(clock.read.wait(), 5)
    assert pm.num_channels == 0
    task = pm._cleanup_task
    assert task is not None
    await pm.close()
    assert task.cancelled()
