"""Versioned publish on the memory engine (issue 16 point 3).

A publication with `version` > 0 in a channel with history is dropped (not stored, not
delivered, the stream's current top returned with `suppressed`) when the channel's last
stored version in the same `version_epoch` is greater or equal; an empty epoch matches any.
The same cases run against Redis in tests/integration/test_redis_version.py.
"""

from __future__ import annotations

import pytest
from test_memory_engine import FakeClock

from app.engines.memory import MemoryBroker
from app.models import HistoryFilter, PublishOptions, StreamPosition
from tests.support.engine import EngineEvents


def vopts(version: int, epoch: str = "", **kw: object) -> PublishOptions:
    return PublishOptions(
        history_size=100, history_ttl=60.0, version=version, version_epoch=epoch, **kw
    )


@pytest.fixture
async def engine():
    broker = MemoryBroker(clock=FakeClock(), cleanup_interval=0)
    rec = EngineEvents()
    await broker.run(rec)
    yield broker, rec
    await broker.close()


async def history(broker: MemoryBroker, ch: str) -> list[tuple[int, bytes]]:
    res = await broker.history(ch, HistoryFilter(limit=-1))
    return [(p.offset, p.data) for p in res.publications]


async def test_same_and_lower_versions_are_dropped(engine):
    broker, rec = engine
    first = await broker.publish("ch", b"v1", vopts(1))
    assert first.position.offset == 1 and not first.suppressed
    second = await broker.publish("ch", b"v2", vopts(2))
    assert second.position == StreamPosition(2, first.position.epoch)
    same = await broker.publish("ch", b"v2 again", vopts(2))
    lower = await broker.publish("ch", b"v1 again", vopts(1))
    for r in (same, lower):
        assert r.suppressed and r.suppress_reason == "version"
        assert r.position == second.position  # the current top, not a new offset
    third = await broker.publish("ch", b"v3", vopts(3))
    assert third.position.offset == 3 and not third.suppressed
    assert [(p.offset, p.data) for _, p, _ in rec.pubs] == [(1, b"v1"), (2, b"v2"), (3, b"v3")]
    assert await history(broker, "ch") == [(1, b"v1"), (2, b"v2"), (3, b"v3")]


async def test_new_version_epoch_resets_and_empty_epoch_matches_any(engine):
    broker, rec = engine
    assert not (await broker.publish("ch", b"a5", vopts(5, "a"))).suppressed
    assert (await broker.publish("ch", b"a4", vopts(4, "a"))).suppressed
    # Another epoch: version 1 is newer than anything of epoch "a".
    assert not (await broker.publish("ch", b"b1", vopts(1, "b"))).suppressed
    assert (await broker.publish("ch", b"b1", vopts(1, "b"))).suppressed
    # No epoch compares with the last stored version whatever its epoch.
    assert (await broker.publish("ch", b"x1", vopts(1))).suppressed
    assert not (await broker.publish("ch", b"x2", vopts(2))).suppressed
    assert [p.data for _, p, _ in rec.pubs] == [b"a5", b"b1", b"x2"]
    assert await history(broker, "ch") == [(1, b"a5"), (2, b"b1"), (3, b"x2")]


async def test_unversioned_publish_is_not_checked_and_keeps_the_last_version(engine):
    broker, _ = engine
    await broker.publish("ch", b"v5", vopts(5))
    assert not (await broker.publish("ch", b"plain", vopts(0))).suppressed
    assert (await broker.publish("ch", b"v3", vopts(3))).suppressed
    assert await history(broker, "ch") == [(1, b"v5"), (2, b"plain")]


async def test_versions_are_compared_as_uint64(engine):
    broker, _ = engine
    top = 2**64 - 1
    assert not (await broker.publish("ch", b"2^53", vopts(2**53))).suppressed
    assert not (await broker.publish("ch", b"2^53+1", vopts(2**53 + 1))).suppressed
    assert not (await broker.publish("ch", b"max", vopts(top))).suppressed
    assert (await broker.publish("ch", b"max-1", vopts(top - 1))).suppressed
    assert (await broker.publish("ch", b"max", vopts(top))).suppressed
    assert [d for _, d in await history(broker, "ch")] == [b"2^53", b"2^53+1", b"max"]


async def test_channels_keep_their_own_versions(engine):
    broker, _ = engine
    await broker.publish("a", b"a3", vopts(3))
    assert not (await broker.publish("b", b"b1", vopts(1))).suppressed
    assert (await broker.publish("a", b"a1", vopts(1))).suppressed


async def test_without_history_versions_are_ignored(engine):
    broker, rec = engine
    plain = PublishOptions(version=2)
    for data in (b"one", b"two"):
        r = await broker.publish("ch", data, plain)
        assert not r.suppressed and r.position == StreamPosition()
    assert [p.data for _, p, _ in rec.pubs] == [b"one", b"two"]


async def test_dropped_publish_does_not_store_its_idempotency_key(engine):
    broker, _ = engine
    await broker.publish("ch", b"v2", vopts(2))
    dropped = await broker.publish("ch", b"v1", vopts(1, idempotency_key="k"))
    assert dropped.suppress_reason == "version"
    # The key was not remembered: a newer version with it is stored.
    stored = await broker.publish("ch", b"v3", vopts(3, idempotency_key="k"))
    assert not stored.suppressed and stored.position.offset == 2
    again = await broker.publish("ch", b"v4", vopts(4, idempotency_key="k"))
    assert again.suppress_reason == "idempotency" and again.position == stored.position
