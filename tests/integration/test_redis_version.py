"""Versioned publish on the Redis engine: lua/history_add.lua's version check (issue 16
point 3), on a real redis-server. The memory engine's cases are
tests/unit/test_memory_version.py."""

from __future__ import annotations

from typing import Any

import pytest

from app.engines.redis.publish import HISTORY_ITEMS_PER_CALL
from app.models import HistoryFilter, PublishOptions, StreamPosition

from .conftest import url_of


def vopts(version: int, epoch: str = "", **kw: Any) -> PublishOptions:
    return PublishOptions(
        history_size=100, history_ttl=300.0, version=version, version_epoch=epoch, **kw
    )


@pytest.fixture
async def engine(make_engine, redis_proc, rdb):
    broker, _, rec = await make_engine(url_of(redis_proc))
    return broker, rec, rdb


async def history(broker, ch: str) -> list[tuple[int, bytes]]:
    res = await broker.history(ch, HistoryFilter(limit=-1))
    return [(p.offset, p.data) for p in res.publications]


async def evalsha_calls(rdb) -> int:
    return int((await rdb.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))


async def delivered(rec, ch: str, sentinel_broker) -> list[bytes]:
    """Everything delivered on `ch`, up to a sentinel published last (PUB/SUB keeps a
    channel's order, so a dropped publication would have arrived before it)."""
    await sentinel_broker.publish(ch, b"sentinel", PublishOptions())
    await rec.wait_for(lambda: any(p.data == b"sentinel" for p in rec.pubs_in(ch)))
    return [p.data for p in rec.pubs_in(ch)][:-1]


async def test_same_and_lower_versions_are_dropped(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["ch"])
    first = await broker.publish("ch", b"v1", vopts(1))
    second = await broker.publish("ch", b"v2", vopts(2))
    assert second.position == StreamPosition(2, first.position.epoch) and not second.suppressed
    same = await broker.publish("ch", b"v2 again", vopts(2))
    lower = await broker.publish("ch", b"v1 again", vopts(1))
    for r in (same, lower):
        assert r.suppressed and r.suppress_reason == "version"
        assert r.position == second.position  # the current top, not a new offset
    third = await broker.publish("ch", b"v3", vopts(3))
    assert third.position.offset == 3 and not third.suppressed
    assert await delivered(rec, "ch", broker) == [b"v1", b"v2", b"v3"]
    assert await history(broker, "ch") == [(1, b"v1"), (2, b"v2"), (3, b"v3")]
    # Kept where centrifuge keeps them: the stream meta hash.
    meta = await rdb.hgetall("centrifugo.stream.meta.ch")
    assert meta == {"e": first.position.epoch, "s": "3", "v": "3", "ve": ""}


async def test_new_version_epoch_resets_and_empty_epoch_matches_any(engine):
    broker, rec, _ = engine
    await broker.subscribe(["ch"])
    assert not (await broker.publish("ch", b"a5", vopts(5, "a"))).suppressed
    assert (await broker.publish("ch", b"a4", vopts(4, "a"))).suppressed
    assert not (await broker.publish("ch", b"b1", vopts(1, "b"))).suppressed
    assert (await broker.publish("ch", b"b1", vopts(1, "b"))).suppressed
    assert (await broker.publish("ch", b"x1", vopts(1))).suppressed
    assert not (await broker.publish("ch", b"x2", vopts(2))).suppressed
    assert await delivered(rec, "ch", broker) == [b"a5", b"b1", b"x2"]
    assert await history(broker, "ch") == [(1, b"a5"), (2, b"b1"), (3, b"x2")]


async def test_unversioned_publish_is_not_checked_and_keeps_the_last_version(engine):
    broker, _, rdb = engine
    await broker.publish("ch", b"v5", vopts(5, "e"))
    assert not (await broker.publish("ch", b"plain", vopts(0))).suppressed
    assert await rdb.hmget("centrifugo.stream.meta.ch", "v", "ve") == ["5", "e"]
    assert (await broker.publish("ch", b"v3", vopts(3))).suppressed
    assert await history(broker, "ch") == [(1, b"v5"), (2, b"plain")]


async def test_versions_are_compared_as_uint64_past_double_precision(engine):
    """Lua numbers are doubles: 2^53 + 1 == 2^53 there, so the script compares strings."""
    broker, _, _ = engine
    top = 2**64 - 1
    assert not (await broker.publish("ch", b"2^53", vopts(2**53))).suppressed
    assert not (await broker.publish("ch", b"2^53+1", vopts(2**53 + 1))).suppressed
    assert (await broker.publish("ch", b"2^53+1", vopts(2**53 + 1))).suppressed
    assert not (await broker.publish("ch", b"10^17", vopts(10**17))).suppressed  # longer
    assert not (await broker.publish("ch", b"max", vopts(top))).suppressed
    assert (await broker.publish("ch", b"max-1", vopts(top - 1))).suppressed
    assert (await broker.publish("ch", b"9", vopts(9))).suppressed  # shorter
    assert [d for _, d in await history(broker, "ch")] == [b"2^53", b"2^53+1", b"10^17", b"max"]


async def test_without_history_versions_are_ignored(engine):
    broker, rec, _ = engine
    await broker.subscribe(["ch"])
    for data in (b"one", b"two"):
        r = await broker.publish("ch", data, PublishOptions(version=2))
        assert not r.suppressed and r.position == StreamPosition()
    assert await delivered(rec, "ch", broker) == [b"one", b"two"]


async def test_dropped_publish_does_not_store_its_idempotency_key(engine):
    broker, _, rdb = engine
    await broker.publish("ch", b"v2", vopts(2))
    dropped = await broker.publish("ch", b"v1", vopts(1, idempotency_key="k"))
    assert dropped.suppress_reason == "version"
    assert not await rdb.exists("centrifugo.result.ch.k")
    stored = await broker.publish("ch", b"v3", vopts(3, idempotency_key="k"))
    assert not stored.suppressed and stored.position.offset == 2
    again = await broker.publish("ch", b"v4", vopts(4, idempotency_key="k"))
    assert again.suppress_reason == "idempotency" and again.position == stored.position


async def test_batched_items_are_each_checked_in_one_script_call(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["a", "b"])
    items = [
        ("a", b"a1", vopts(1)),
        ("a", b"a1 again", vopts(1)),
        ("b", b"b7", vopts(7)),
        ("a", b"a3", vopts(3)),
        ("a", b"a2", vopts(2)),
        ("b", b"b7 again", vopts(7)),
        ("b", b"b1 other epoch", vopts(1, "x")),
        ("a", b"a4", vopts(4)),
    ]
    assert len(items) < HISTORY_ITEMS_PER_CALL
    await broker.publish("warm", b"x", vopts(0))  # the script is loaded: one EVALSHA below
    before = await evalsha_calls(rdb)
    results = await broker.publish_many(items)
    assert await evalsha_calls(rdb) - before == 1
    got = [(r.position.offset, r.suppress_reason) for r in results]  # type: ignore[union-attr]
    assert got == [
        (1, ""),
        (1, "version"),
        (1, ""),
        (2, ""),
        (2, "version"),
        (1, "version"),
        (2, ""),
        (3, ""),
    ]
    assert await delivered(rec, "a", broker) == [b"a1", b"a3", b"a4"]
    assert await delivered(rec, "b", broker) == [b"b7", b"b1 other epoch"]
    assert await history(broker, "a") == [(1, b"a1"), (2, b"a3"), (3, b"a4")]
    assert await history(broker, "b") == [(1, b"b7"), (2, b"b1 other epoch")]


async def test_version_survives_the_noscript_reload(engine):
    """After SCRIPT FLUSH the command is re-sent as EVAL with the same arguments (from its
    packed bytes, resp.eval_command): the version arguments must be among them."""
    broker, _, rdb = engine
    await broker.publish("ch", b"v5", vopts(5))
    await rdb.script_flush()
    r = await broker.publish("ch", b"v4", vopts(4))
    assert r.suppress_reason == "version" and r.position.offset == 1
    await rdb.script_flush()
    results = await broker.publish_many([("ch", b"v6", vopts(6)), ("ch", b"v6", vopts(6))])
    assert [r.suppress_reason for r in results] == ["", "version"]  # type: ignore[union-attr]
    assert await history(broker, "ch") == [(1, b"v5"), (2, b"v6")]
