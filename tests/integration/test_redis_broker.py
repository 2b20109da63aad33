"""RedisBroker history, offsets, epochs, TTLs, idempotency and key layout (research/redis-engine.md §2)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from app.models import ClientInfo, HistoryFilter, PublishOptions, StreamPosition

from .conftest import url_of

EPOCH_RE = re.compile(r"^[A-Za-z]{8}$")


def hist(size: int = 100, ttl: float = 300, meta_ttl: float = 0, **kw: Any) -> PublishOptions:
    return PublishOptions(history_size=size, history_ttl=ttl, history_meta_ttl=meta_ttl, **kw)


async def read(broker, ch: str, limit: int = -1, since=None, reverse=False, meta_ttl=0.0):
    return await broker.history(ch, HistoryFilter(since, limit, reverse, meta_ttl))


async def publish_n(broker, ch: str, n: int, opts: PublishOptions | None = None) -> list:
    return [await broker.publish(ch, b"m%d" % i, opts or hist()) for i in range(1, n + 1)]


async def expire_now(rdb, key: str) -> None:
    """Let Redis expire `key` itself (1 ms TTL), then wait until it is really gone."""
    assert await rdb.pexpire(key, 1)
    for _ in range(500):
        if not await rdb.exists(key):
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{key} did not expire")


@pytest.fixture
async def engine(make_engine, redis_proc, rdb):
    broker, presence, rec = await make_engine(url_of(redis_proc))
    return broker, rec, rdb


# --- offsets and epochs ---


async def test_offsets_dense_from_one_per_channel(engine):
    broker, _, rdb = engine
    got: dict[str, list[int]] = {"a": [], "b": []}
    epochs: dict[str, set[str]] = {"a": set(), "b": set()}
    for i in range(12):
        ch = "a" if i % 3 else "b"
        r = await broker.publish(ch, b"x", hist())
        assert not r.suppressed
        got[ch].append(r.position.offset)
        epochs[ch].add(r.position.epoch)
    assert got["a"] == list(range(1, 9))
    assert got["b"] == list(range(1, 5))
    assert len(epochs["a"]) == 1 and len(epochs["b"]) == 1
    (ea,), (eb,) = epochs["a"], epochs["b"]
    assert EPOCH_RE.match(ea) and EPOCH_RE.match(eb) and ea != eb
    # The meta hash holds exactly the epoch and the top offset.
    assert await rdb.hgetall("centrifugo.stream.meta.a") == {"e": ea, "s": "8"}


async def test_epoch_created_once_and_reused(engine):
    broker, _, rdb = engine
    first = await broker.publish("ch", b"1", hist())
    epoch = first.position.epoch
    for _ in range(5):
        r = await broker.publish("ch", b"x", hist())
        assert r.position.epoch == epoch
        h = await read(broker, "ch", limit=0)
        assert h.position.epoch == epoch
    assert await rdb.hget("centrifugo.stream.meta.ch", "e") == epoch
    assert (await read(broker, "ch", limit=0)).position == StreamPosition(6, epoch)


async def test_concurrent_publishes_from_two_nodes_share_one_sequence(make_engine, redis_proc, rdb):
    a, _, _ = await make_engine(url_of(redis_proc), node_id="a")
    b, _, _ = await make_engine(url_of(redis_proc), node_id="b")
    results = await asyncio.gather(
        *(n.publish("shared", b"x", hist()) for _ in range(50) for n in (a, b))
    )
    assert sorted(r.position.offset for r in results) == list(range(1, 101))
    assert len({r.position.epoch for r in results}) == 1


async def test_history_read_creates_meta_epoch(engine):
    broker, _, rdb = engine
    h = await read(broker, "fresh", limit=0, meta_ttl=600)
    assert h.publications == [] and h.position.offset == 0
    assert EPOCH_RE.match(h.position.epoch)
    assert await rdb.hgetall("centrifugo.stream.meta.fresh") == {"e": h.position.epoch}
    assert 590 <= await rdb.ttl("centrifugo.stream.meta.fresh") <= 600
    assert not await rdb.exists("centrifugo.stream.fresh")
    # A second read keeps it; the first publish continues under the same epoch from 1.
    assert (await read(broker, "fresh", limit=-1)).position == h.position
    r = await broker.publish("fresh", b"first", hist())
    assert r.position == StreamPosition(1, h.position.epoch)
    h2 = await read(broker, "fresh")
    assert [p.offset for p in h2.publications] == [1]
    assert h2.publications[0].data == b"first"


# --- meta TTL ---


async def test_meta_ttl_is_sliding_and_defaults_to_720h(engine):
    broker, _, rdb = engine
    await broker.publish("ch", b"x", hist(meta_ttl=100))
    assert 95 <= await rdb.ttl("centrifugo.stream.meta.ch") <= 100
    # A read with a meta TTL refreshes it (recovery and position checks keep a channel alive).
    await rdb.expire("centrifugo.stream.meta.ch", 10)
    await read(broker, "ch", limit=0, meta_ttl=100)
    assert 95 <= await rdb.ttl("centrifugo.stream.meta.ch") <= 100
    # So does a publish.
    await rdb.expire("centrifugo.stream.meta.ch", 10)
    await broker.publish("ch", b"y", hist(meta_ttl=100))
    assert 95 <= await rdb.ttl("centrifugo.stream.meta.ch") <= 100
    # No meta TTL given: the engine default, 720h.
    await broker.publish("other", b"x", hist())
    assert 720 * 3600 - 10 <= await rdb.ttl("centrifugo.stream.meta.other") <= 720 * 3600


async def test_meta_expiry_starts_new_epoch_and_offsets_restart(engine):
    broker, _, rdb = engine
    old = (await publish_n(broker, "ch", 3, hist(meta_ttl=60)))[-1].position
    assert old.offset == 3
    await expire_now(rdb, "centrifugo.stream.meta.ch")
    r = await broker.publish("ch", b"new", hist(meta_ttl=60))
    assert r.position.offset == 1
    assert r.position.epoch != old.epoch and EPOCH_RE.match(r.position.epoch)
    h = await read(broker, "ch")
    assert h.position == r.position
    assert [(p.offset, p.data) for p in h.publications] == [(1, b"new")]


async def test_meta_expiry_seen_by_a_read_gives_new_epoch(engine):
    broker, _, rdb = engine
    old = (await publish_n(broker, "ch", 2))[-1].position
    await expire_now(rdb, "centrifugo.stream.meta.ch")
    h = await read(broker, "ch", limit=0)
    assert h.position.offset == 0 and h.position.epoch != old.epoch
    r = await broker.publish("ch", b"x", hist())
    assert r.position == StreamPosition(1, h.position.epoch)


async def test_new_series_guard_drops_stale_stream_when_meta_lost(engine):
    broker, _, rdb = engine
    await publish_n(broker, "ch", 4)
    await rdb.delete("centrifugo.stream.meta.ch")  # evicted / lost while the stream survived
    assert await rdb.xlen("centrifugo.stream.ch") == 4
    r = await broker.publish("ch", b"fresh", hist())
    assert r.position.offset == 1
    entries = await rdb.xrange("centrifugo.stream.ch")
    assert [e[0] for e in entries] == ["1-0"]
    h = await read(broker, "ch")
    assert [(p.offset, p.data) for p in h.publications] == [(1, b"fresh")]


# --- stream size and TTL ---


async def test_maxlen_trimming_is_exact(engine):
    broker, _, rdb = engine
    for i in range(1, 11):
        await broker.publish("ch", b"m%d" % i, hist(size=3))
        assert await rdb.xlen("centrifugo.stream.ch") == min(i, 3)
    h = await read(broker, "ch")
    assert [(p.offset, p.data) for p in h.publications] == [(8, b"m8"), (9, b"m9"), (10, b"m10")]
    assert h.position.offset == 10
    # A size of one keeps just the newest.
    await publish_n(broker, "one", 5, hist(size=1))
    assert [e[0] for e in await rdb.xrange("centrifugo.stream.one")] == ["5-0"]


async def test_stream_expire_counts_from_last_publish(engine):
    broker, _, rdb = engine
    await broker.publish("ch", b"a", hist(ttl=30))
    assert 25 <= await rdb.ttl("centrifugo.stream.ch") <= 30
    await rdb.expire("centrifugo.stream.ch", 5)
    await broker.publish("ch", b"b", hist(ttl=30))
    assert 25 <= await rdb.ttl("centrifugo.stream.ch") <= 30
    # Sub-second TTLs round up, never down to "no expiry".
    await broker.publish("short", b"a", hist(ttl=0.2))
    assert await rdb.ttl("centrifugo.stream.short") == 1


async def test_expired_stream_keeps_position_and_offsets_continue(engine):
    broker, _, rdb = engine
    last = (await publish_n(broker, "ch", 3, hist(ttl=30)))[-1].position
    await expire_now(rdb, "centrifugo.stream.ch")
    h = await read(broker, "ch")
    assert h.publications == [] and h.position == last
    r = await broker.publish("ch", b"next", hist(ttl=30))
    assert r.position == StreamPosition(4, last.epoch)
    assert [p.offset for p in (await read(broker, "ch")).publications] == [4]


async def test_remove_history_keeps_epoch_and_top_offset(engine):
    broker, _, rdb = engine
    last = (await publish_n(broker, "ch", 5))[-1].position
    await broker.remove_history("ch")
    assert not await rdb.exists("centrifugo.stream.ch")
    assert await rdb.hgetall("centrifugo.stream.meta.ch") == {"e": last.epoch, "s": "5"}
    h = await read(broker, "ch")
    assert h.publications == [] and h.position == last
    r = await broker.publish("ch", b"x", hist())
    assert r.position == StreamPosition(6, last.epoch)
    # Removing the history of an unknown channel is harmless.
    await broker.remove_history("never-used")


# --- history reads ---


async def test_history_filters(engine):
    broker, _, _ = engine
    epoch = (await publish_n(broker, "ch", 10))[-1].position.epoch
    top = StreamPosition(10, epoch)

    async def offsets(**kw):
        h = await read(broker, "ch", **kw)
        assert h.position == top  # the top always comes back
        return [p.offset for p in h.publications]

    def since(n: int) -> StreamPosition:
        return StreamPosition(n, epoch)

    assert await offsets(limit=0) == []
    assert await offsets(limit=-1) == list(range(1, 11))
    assert await offsets(limit=3) == [1, 2, 3]
    assert await offsets(limit=100) == list(range(1, 11))
    assert await offsets(since=since(0)) == list(range(1, 11))
    assert await offsets(since=since(4)) == list(range(5, 11))
    assert await offsets(since=since(4), limit=2) == [5, 6]
    assert await offsets(since=since(9)) == [10]
    assert await offsets(since=since(10)) == []
    assert await offsets(since=since(4), limit=0) == []
    assert await offsets(reverse=True) == list(range(10, 0, -1))
    assert await offsets(reverse=True, limit=3) == [10, 9, 8]
    assert await offsets(reverse=True, since=since(5)) == [4, 3, 2, 1]
    assert await offsets(reverse=True, since=since(5), limit=2) == [4, 3]
    assert await offsets(reverse=True, since=since(2)) == [1]
    assert await offsets(reverse=True, since=since(1)) == []
    assert await offsets(reverse=True, limit=0) == []
    data = [p.data for p in (await read(broker, "ch", since=since(7))).publications]
    assert data == [b"m8", b"m9", b"m10"]


async def test_history_of_trimmed_stream_since_before_window(engine):
    broker, _, _ = engine
    await publish_n(broker, "ch", 10, hist(size=4))
    h = await read(broker, "ch", since=StreamPosition(2, ""))
    assert [p.offset for p in h.publications] == [7, 8, 9, 10]
    h = await read(broker, "ch", reverse=True, since=StreamPosition(9, ""), limit=10)
    assert [p.offset for p in h.publications] == [8, 7]


async def test_publication_fields_round_trip(engine):
    broker, rec, _ = engine
    info = ClientInfo("user-1", "client-1", b'{"name":"A"}', b"\x00\xffchan")
    data = b'\n{"a":\n1}\x00\xfe\n'
    opts = hist(client_info=info, tags={"k": "v", "x": "y"}, delta=True)
    await broker.subscribe(["ch"])
    r = await broker.publish("ch", data, opts)
    (live,) = await rec.wait_pubs("ch", 1)
    (stored,) = (await read(broker, "ch")).publications
    for p in (live, stored):
        assert p.data == data
        assert p.info == info
        assert p.tags == {"k": "v", "x": "y"}
        assert p.offset == r.position.offset == 1
    # The publisher's "may use delta" travels with the live publication (the hub's fan-out
    # makes patches from it); a publication read from history is never a patch.
    assert live.delta is True
    assert stored.delta is False
    assert rec.pubs[0][2] == r.position.epoch
    # Without info, tags or delta the stored payload is the bare data.
    await broker.publish("plain", b"raw", hist())
    (p,) = (await read(broker, "plain")).publications
    assert (p.data, p.info, p.tags, p.delta) == (b"raw", None, None, False)


# --- idempotency ---


async def test_idempotent_publish_with_history(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["ch"])
    opts = hist(idempotency_key="k1", idempotent_result_ttl=120)
    first = await broker.publish("ch", b"one", opts)
    assert first.position.offset == 1 and not first.suppressed
    again = await broker.publish("ch", b"two", opts)
    assert again.suppressed and again.position == first.position
    assert await rdb.xlen("centrifugo.stream.ch") == 1
    assert await rdb.hgetall("centrifugo.result.ch.k1") == {
        "e": first.position.epoch,
        "s": "1",
    }
    assert 115 <= await rdb.ttl("centrifugo.result.ch.k1") <= 120
    # Nothing was delivered for the suppressed publish: the next one arrives right after the first.
    other = await broker.publish("ch", b"three", hist(idempotency_key="k2"))
    assert other.position.offset == 2 and not other.suppressed
    pubs = await rec.wait_pubs("ch", 2)
    await broker.publish("ch", b"sentinel", hist())
    pubs = await rec.wait_pubs("ch", 3)
    assert [(p.offset, p.data) for p in pubs] == [(1, b"one"), (2, b"three"), (3, b"sentinel")]
    # The same key on another channel is independent.
    r = await broker.publish("elsewhere", b"x", opts)
    assert r.position.offset == 1 and not r.suppressed


async def test_idempotent_publish_without_history(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["ch"])
    opts = PublishOptions(idempotency_key="k", idempotent_result_ttl=60)
    first = await broker.publish("ch", b"one", opts)
    assert not first.suppressed and first.position == StreamPosition()
    again = await broker.publish("ch", b"two", opts)
    assert again.suppressed and again.position == StreamPosition()
    assert 55 <= await rdb.ttl("centrifugo.result.ch.k") <= 60
    assert not await rdb.exists("centrifugo.stream.ch")
    await broker.publish("ch", b"sentinel", PublishOptions())
    pubs = await rec.wait_pubs("ch", 2)
    assert [(p.offset, p.data) for p in pubs] == [(0, b"one"), (0, b"sentinel")]
    assert [e for _, _, e in rec.pubs] == ["", ""]
    # After the result expires the key may be used again.
    await rdb.delete("centrifugo.result.ch.k")
    assert not (await broker.publish("ch", b"three", opts)).suppressed


async def test_history_needs_both_size_and_ttl(engine):
    broker, _, rdb = engine
    for opts in (hist(size=0), hist(ttl=0), PublishOptions()):
        r = await broker.publish("ch", b"x", opts)
        assert r.position == StreamPosition() and not r.suppressed
    assert await rdb.keys("*") == []


# --- key layout (§2.1) ---


@pytest.mark.parametrize("prefix", ["centrifugo", "myapp"])
async def test_key_names(make_engine, redis_proc, rdb, prefix):
    opts: dict[str, Any] = {} if prefix == "centrifugo" else {"prefix": prefix}
    broker, presence, _ = await make_engine(url_of(redis_proc), node_id="nid", **opts)
    P = prefix
    for ch in ("news", "ns:room.1", "$private", "user#42,43"):
        await broker.publish(ch, b"x", hist(idempotency_key="key-1"))
        await presence.add_presence(ch, "c1", ClientInfo("u1", "c1"))
    await broker.publish("nohist", b"x", PublishOptions(idempotency_key="k2"))
    expected = {f"{P}.result.nohist.k2"}
    for ch in ("news", "ns:room.1", "$private", "user#42,43"):
        expected |= {
            f"{P}.stream.{ch}",
            f"{P}.stream.meta.{ch}",
            f"{P}.result.{ch}.key-1",
            f"{P}.presence.data.{ch}",
            f"{P}.presence.expire.{ch}",
            f"{P}.presence.user.expire.{ch}",
            f"{P}.presence.user.clients.{ch}",
        }
    assert set(await rdb.keys("*")) == expected
    assert {k async for k in rdb.scan_iter(match=f"{P}.stream.*")} == {
        k for k in expected if k.startswith(f"{P}.stream.")
    }
    assert await rdb.type(f"{P}.stream.news") == "stream"
    assert await rdb.type(f"{P}.stream.meta.news") == "hash"
    assert await rdb.type(f"{P}.presence.expire.news") == "zset"
    # Stream entries: id "<offset>-0", one field "d".
    ((entry_id, fields),) = await rdb.xrange(f"{P}.stream.news")
    assert entry_id == "1-0" and list(fields) == ["d"]
    # PUB/SUB names: sharded client channels, classic control and node channels.
    await broker.subscribe(["news", "ns:room.1"])
    assert set(await rdb.execute_command("PUBSUB", "SHARDCHANNELS")) == {
        f"{P}.client.news",
        f"{P}.client.ns:room.1",
    }
    assert set(await rdb.pubsub_channels()) == {f"{P}.control", f"{P}.node.nid"}
