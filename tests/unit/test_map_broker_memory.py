"""The memory map broker (app/maps/memory.py) against the MapBroker contract: state, stream,
epochs, suppression (idempotency, version, key mode, CAS), paging, expiry and delivery.

Cases follow centrifuge's map_broker_memory_test.go, map_broker_shared_test.go and
map_broker_readstream_test.go. Expiry runs on a clock the tests move (`cleanup()` sweeps
at once), except the key TTL cases, which run the broker's own expiry loop with real
time and await the removal it delivers.
"""

from __future__ import annotations

import time

import pytest

from app.errors import ERROR_INTERNAL, ERROR_UNRECOVERABLE_POSITION, ClientError
from app.maps.broker import (
    SUPPRESS_IDEMPOTENCY,
    SUPPRESS_KEY_EXISTS,
    SUPPRESS_KEY_NOT_FOUND,
    SUPPRESS_POSITION_MISMATCH,
    SUPPRESS_VERSION,
    KeyMode,
    MapChannelOptions,
    MapMode,
    MapPublishOptions,
    MapRemoveOptions,
)
from app.maps.memory import MemoryMapBroker
from app.models import ClientInfo, Publication, StreamPosition
from tests.support.engine import EngineEvents

RECOVERABLE = MapChannelOptions(
    MapMode.RECOVERABLE, key_ttl=300.0, stream_size=100, stream_ttl=300.0, meta_ttl=3000.0
)
PERSISTENT = MapChannelOptions(MapMode.PERSISTENT, stream_size=100, stream_ttl=300.0)
EPHEMERAL = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=30.0)


class FakeClock:
    """Monotonic time the tests move by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def events():
    return EngineEvents()


@pytest.fixture
async def broker(clock: FakeClock, events: EngineEvents):
    """A broker on the fake clock, its sweep run by hand (`cleanup()`)."""
    b = MemoryMapBroker(clock=clock, cleanup_interval=0)
    await b.run(events)
    yield b
    await b.close()


def put(data: bytes = b"{}", **kw) -> MapPublishOptions:
    return MapPublishOptions(data=data, **kw)


async def state_of(b: MemoryMapBroker, ch: str, chopts=RECOVERABLE) -> dict[str, bytes]:
    res = await b.read_state(ch, chopts)
    return {p.key: p.data for p in res.publications}


async def stream_of(b: MemoryMapBroker, ch: str, chopts=RECOVERABLE) -> list[Publication]:
    return (await b.read_stream(ch, chopts)).publications


# -- state and stream ------------------------------------------------------------------


async def test_publish_writes_state_and_stream_with_dense_offsets(broker):
    info = ClientInfo("u1", "c1", b'{"conn":1}', b'{"chan":1}')
    r1 = await broker.publish("m", "k1", put(b"1", tags={"t": "a"}, client_info=info), RECOVERABLE)
    r2 = await broker.publish("m", "k2", put(b"2"), RECOVERABLE)
    r3 = await broker.publish("m", "k1", put(b"3"), RECOVERABLE)
    assert [r1.position.offset, r2.position.offset, r3.position.offset] == [1, 2, 3]
    assert r1.position.epoch == r2.position.epoch == r3.position.epoch != ""
    assert len(r1.position.epoch) == 8 and not r1.suppressed

    st = await broker.read_state("m", RECOVERABLE)
    assert st.position == StreamPosition(3, r1.position.epoch)
    assert [(p.key, p.offset, p.data) for p in st.publications] == [
        ("k1", 3, b"3"),
        ("k2", 2, b"2"),
    ]
    stream = await stream_of(broker, "m")
    assert [(p.key, p.offset, p.data) for p in stream] == [
        ("k1", 1, b"1"),
        ("k2", 2, b"2"),
        ("k1", 3, b"3"),
    ]
    first = stream[0]
    assert first.tags == {"t": "a"} and first.info == info and first.time > 0
    assert await broker.stats("m") == 2


async def test_state_entries_keep_client_info_and_tags(broker):
    info = ClientInfo("u1", "c1", b"conn", b"chan")
    await broker.publish("m", "k1", put(b"d", client_info=info, tags={"a": "b"}), RECOVERABLE)
    by_key = await broker.read_state("m", RECOVERABLE, key="k1")
    paged = await broker.read_state("m", RECOVERABLE, limit=-1)
    for pub in (by_key.publications[0], paged.publications[0]):
        assert pub.info == info and pub.tags == {"a": "b"} and pub.key == "k1" and pub.offset == 1


async def test_readers_get_copies_not_the_stored_publications(broker):
    await broker.publish("m", "k", put(b"v"), RECOVERABLE)
    (pub,) = (await broker.read_state("m", RECOVERABLE)).publications
    pub.data = b"changed"
    (spub,) = await stream_of(broker, "m")
    spub.data = b"changed"
    assert await state_of(broker, "m") == {"k": b"v"}
    assert [p.data for p in await stream_of(broker, "m")] == [b"v"]


async def test_empty_channel_reads_create_one_stable_epoch(broker):
    st = await broker.read_state("a", RECOVERABLE)
    assert st.publications == [] and st.cursor == "" and st.position.offset == 0
    assert st.position.epoch != ""
    sr = await broker.read_stream("a", RECOVERABLE, limit=0)
    assert sr.position == st.position
    assert (await broker.read_state("a", RECOVERABLE)).position == st.position
    fresh = await broker.read_stream("b", RECOVERABLE, limit=-1)
    assert fresh.publications == [] and fresh.position.offset == 0 and fresh.position.epoch
    # The epoch a read created is the one the first write uses.
    r = await broker.publish("a", "k", put(), RECOVERABLE)
    assert r.position == StreamPosition(1, st.position.epoch)


async def test_read_state_pages_in_key_order_with_cursor(broker):
    keys = [f"key{i}" for i in (7, 3, 9, 0, 5, 1, 8, 2, 6, 4)]
    for k in keys:
        await broker.publish("m", k, put(k.encode()), RECOVERABLE)
    pages, cursor = [], ""
    while True:
        res = await broker.read_state("m", RECOVERABLE, cursor=cursor, limit=3)
        pages.append([p.key for p in res.publications])
        assert res.position.offset == 10
        cursor = res.cursor
        if not cursor:
            break
        assert cursor == res.publications[-1].key  # the cursor is the last key returned
    assert pages == [
        ["key0", "key1", "key2"],
        ["key3", "key4", "key5"],
        ["key6", "key7", "key8"],
        ["key9"],
    ]
    # A page that ends exactly at the last key says so: no cursor.
    res = await broker.read_state("m", RECOVERABLE, cursor="key6", limit=3)
    assert [p.key for p in res.publications] == ["key7", "key8", "key9"] and res.cursor == ""
    res = await broker.read_state("m", RECOVERABLE, cursor="key9", limit=3)
    assert res.publications == [] and res.cursor == ""


async def test_read_state_cursor_survives_changes_between_pages(broker):
    for k in ("a", "b", "c", "d"):
        await broker.publish("m", k, put(), RECOVERABLE)
    page1 = await broker.read_state("m", RECOVERABLE, limit=2)
    assert page1.cursor == "b"
    await broker.remove("m", "b", MapRemoveOptions(), RECOVERABLE)  # the cursor's own key
    await broker.publish("m", "bb", put(), RECOVERABLE)  # added after the cursor
    await broker.publish("m", "a0", put(), RECOVERABLE)  # added before it: in the stream
    page2 = await broker.read_state("m", RECOVERABLE, cursor=page1.cursor, limit=2)
    assert [p.key for p in page2.publications] == ["bb", "c"]
    page3 = await broker.read_state("m", RECOVERABLE, cursor=page2.cursor, limit=2)
    assert [p.key for p in page3.publications] == ["d"] and page3.cursor == ""


async def test_read_state_limits_and_key_filter(broker):
    for i in range(25):
        await broker.publish("m", f"k{i:02d}", put(b"%d" % i), RECOVERABLE)
    everything = await broker.read_state("m", RECOVERABLE, limit=-1)
    assert len(everything.publications) == 25 and everything.cursor == ""
    position_only = await broker.read_state("m", RECOVERABLE, limit=0)
    assert position_only.publications == [] and position_only.position.offset == 25
    one = await broker.read_state("m", RECOVERABLE, key="k07", cursor="k20", limit=0)
    assert [(p.key, p.data, p.offset) for p in one.publications] == [("k07", b"7", 8)]
    none = await broker.read_state("m", RECOVERABLE, key="absent")
    assert none.publications == [] and none.position.offset == 25


async def test_read_state_revision_with_another_epoch_is_unrecoverable(broker):
    r = await broker.publish("m", "k", put(), RECOVERABLE)
    ok = await broker.read_state("m", RECOVERABLE, revision=r.position)
    assert len(ok.publications) == 1
    with pytest.raises(ClientError) as e:
        await broker.read_state("m", RECOVERABLE, revision=StreamPosition(1, "wrong"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    # A channel that does not exist (state lost): an epoch from before cannot match ...
    with pytest.raises(ClientError) as e:
        await broker.read_state("gone", RECOVERABLE, revision=StreamPosition(100, "old"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    # ... while a revision without epoch on a new channel starts it (centrifuge's getState).
    res = await broker.read_state("new", RECOVERABLE, revision=StreamPosition(0, ""))
    assert res.position.epoch != ""


# -- read_stream -------------------------------------------------------------------------


async def publish_n(b: MemoryMapBroker, ch: str, n: int, chopts=RECOVERABLE) -> str:
    epoch = ""
    for i in range(1, n + 1):
        r = await b.publish(ch, f"key_{i}", put(b"data_%d" % i), chopts)
        epoch = r.position.epoch
    return epoch


@pytest.mark.parametrize(
    ("since", "limit", "reverse", "want"),
    [
        (None, -1, False, [1, 2, 3, 4, 5]),
        (None, 2, False, [1, 2]),
        (None, 0, False, []),
        (0, -1, False, [1, 2, 3, 4, 5]),
        (2, -1, False, [3, 4, 5]),
        (2, 2, False, [3, 4]),
        (5, -1, False, []),
        (10, -1, False, []),
        (None, -1, True, [5, 4, 3, 2, 1]),
        (None, 2, True, [5, 4]),
        (5, -1, True, [4, 3, 2, 1]),
        (3, 2, True, [2, 1]),
        (6, 1, True, [5]),
        (9, -1, True, []),
        (1, -1, True, []),
    ],
)
async def test_read_stream_since_limit_reverse(broker, since, limit, reverse, want):
    epoch = await publish_n(broker, "s", 5)
    pos = None if since is None else StreamPosition(since, epoch)
    res = await broker.read_stream("s", RECOVERABLE, since=pos, limit=limit, reverse=reverse)
    assert [p.offset for p in res.publications] == want
    assert [p.data for p in res.publications] == [b"data_%d" % o for o in want]
    assert res.position == StreamPosition(5, epoch)


async def test_read_stream_holds_removals(broker):
    await publish_n(broker, "s", 3)
    await broker.remove("s", "key_2", MapRemoveOptions(), RECOVERABLE)
    res = await broker.read_stream("s", RECOVERABLE)
    assert res.position.offset == 4
    removal = res.publications[3]
    assert (removal.key, removal.removed, removal.offset, removal.data) == ("key_2", True, 4, b"")
    after = await broker.read_stream("s", RECOVERABLE, since=StreamPosition(3, res.position.epoch))
    assert [(p.key, p.removed) for p in after.publications] == [("key_2", True)]


async def test_read_stream_with_another_epoch_is_unrecoverable(broker):
    await publish_n(broker, "s", 2)
    with pytest.raises(ClientError) as e:
        await broker.read_stream("s", RECOVERABLE, since=StreamPosition(0, "wrong"))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION


async def test_stream_is_trimmed_to_stream_size(broker):
    small = MapChannelOptions(MapMode.PERSISTENT, stream_size=3, stream_ttl=300.0)
    epoch = await publish_n(broker, "s", 5, small)
    res = await broker.read_stream("s", small)
    assert [p.offset for p in res.publications] == [3, 4, 5]
    assert res.position == StreamPosition(5, epoch)
    ok = await broker.read_stream("s", small, since=StreamPosition(2, epoch))
    assert [p.offset for p in ok.publications] == [3, 4, 5]
    # A reader at offset 1 needs offset 2, which is gone: it must re-sync; so must one at 0
    # (the contract's rule; centrifuge's Node exempts since 0), position-only reads too.
    for since, limit in ((1, -1), (0, -1), (1, 0)):
        with pytest.raises(ClientError) as e:
            await broker.read_stream("s", small, since=StreamPosition(since, epoch), limit=limit)
        assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    # Reverse reads do not judge the gap.
    rev = await broker.read_stream("s", small, since=StreamPosition(5, epoch), reverse=True)
    assert [p.offset for p in rev.publications] == [4, 3]


async def test_stream_ttl_drops_entries_but_keeps_position_and_state(broker, clock):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=300.0, stream_size=100, stream_ttl=1.0, meta_ttl=3000.0
    )
    epoch = await publish_n(broker, "s", 2, chopts)
    clock.advance(0.9)
    assert len(await stream_of(broker, "s", chopts)) == 2
    await broker.publish("s", "key_3", put(), chopts)  # an append restarts the stream TTL
    clock.advance(0.9)
    broker.cleanup()
    assert len(await stream_of(broker, "s", chopts)) == 3
    clock.advance(0.2)
    broker.cleanup()
    res = await broker.read_stream("s", chopts)
    assert res.publications == [] and res.position == StreamPosition(3, epoch)
    assert len(await state_of(broker, "s", chopts)) == 3
    # A reader behind the top can no longer catch up; one at the top can.
    with pytest.raises(ClientError):
        await broker.read_stream("s", chopts, since=StreamPosition(2, epoch))
    at_top = await broker.read_stream("s", chopts, since=StreamPosition(3, epoch))
    assert at_top.publications == []


async def test_stream_ttl_applies_on_read_before_the_sweep(broker, clock):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=300.0, stream_size=100, stream_ttl=1.0, meta_ttl=3000.0
    )
    await publish_n(broker, "s", 2, chopts)
    clock.advance(1.5)
    assert await stream_of(broker, "s", chopts) == []


# -- idempotency ---------------------------------------------------------------------------


async def test_idempotent_publish_returns_the_first_result(broker, events, clock):
    await broker.subscribe(["m"])
    r1 = await broker.publish("m", "k", put(b"1", idempotency_key="ik"), RECOVERABLE)
    r2 = await broker.publish("m", "other", put(b"2", idempotency_key="ik"), RECOVERABLE)
    assert not r1.suppressed
    assert r2.suppressed and r2.suppress_reason == SUPPRESS_IDEMPOTENCY
    assert r2.position == r1.position
    assert await state_of(broker, "m") == {"k": b"1"}
    assert len(events.pubs_in("m")) == 1
    # The same idempotency key in another channel is another operation.
    r3 = await broker.publish("m2", "k", put(idempotency_key="ik"), RECOVERABLE)
    assert not r3.suppressed


async def test_idempotency_results_expire(broker, clock):
    opts = put(b"1", idempotency_key="ik", idempotent_result_ttl=0.5)
    first = await broker.publish("m", "k", opts, RECOVERABLE)
    clock.advance(0.4)
    assert (await broker.publish("m", "k", opts, RECOVERABLE)).suppressed
    clock.advance(0.2)
    again = await broker.publish("m", "k", opts, RECOVERABLE)  # expired, even before the sweep
    assert not again.suppressed and again.position.offset == first.position.offset + 1
    clock.advance(1.0)
    broker.cleanup()
    assert broker.num_idempotency_results == 0


async def test_idempotency_ttl_zero_means_the_default(broker, clock):
    opts = put(idempotency_key="ik", idempotent_result_ttl=0)
    await broker.publish("m", "k", opts, RECOVERABLE)
    clock.advance(299.0)
    assert (await broker.publish("m", "k", opts, RECOVERABLE)).suppressed
    clock.advance(2.0)
    assert not (await broker.publish("m", "k", opts, RECOVERABLE)).suppressed


async def test_idempotent_remove(broker):
    await broker.publish("m", "k1", put(), RECOVERABLE)
    await broker.publish("m", "k2", put(), RECOVERABLE)
    r1 = await broker.remove("m", "k1", MapRemoveOptions(idempotency_key="r"), RECOVERABLE)
    r2 = await broker.remove("m", "k2", MapRemoveOptions(idempotency_key="r"), RECOVERABLE)
    assert not r1.suppressed
    assert r2.suppressed and r2.suppress_reason == SUPPRESS_IDEMPOTENCY
    assert r2.position == r1.position
    assert list(await state_of(broker, "m")) == ["k2"]


async def test_suppressed_writes_do_not_remember_their_idempotency_key(broker):
    await broker.publish("m", "k", put(b"1"), RECOVERABLE)
    blocked = put(b"2", idempotency_key="ik", key_mode=KeyMode.IF_NEW)
    assert (await broker.publish("m", "k", blocked, RECOVERABLE)).suppress_reason == (
        SUPPRESS_KEY_EXISTS
    )
    ok = await broker.publish("m", "k2", put(idempotency_key="ik"), RECOVERABLE)
    assert not ok.suppressed


# -- version ---------------------------------------------------------------------------------


async def test_per_key_version(broker, events):
    await broker.subscribe(["m"])
    assert not (await broker.publish("m", "k", put(b"v10", version=10), RECOVERABLE)).suppressed
    stale = await broker.publish("m", "k", put(b"v5", version=5), RECOVERABLE)
    same = await broker.publish("m", "k", put(b"v10b", version=10), RECOVERABLE)
    for r in (stale, same):
        assert r.suppressed and r.suppress_reason == SUPPRESS_VERSION
        assert r.position.offset == 1
    # Versions are per key.
    assert not (await broker.publish("m", "other", put(version=1), RECOVERABLE)).suppressed
    assert not (await broker.publish("m", "k", put(b"v11", version=11), RECOVERABLE)).suppressed
    assert (await state_of(broker, "m"))["k"] == b"v11"
    assert [p.data for p in events.pubs_in("m")] == [b"v10", b"{}", b"v11"]


async def test_version_epoch_scopes_the_version(broker):
    await broker.publish("m", "k", put(version=10, version_epoch="a"), RECOVERABLE)
    other_epoch = await broker.publish("m", "k", put(version=1, version_epoch="b"), RECOVERABLE)
    assert not other_epoch.suppressed
    # An empty version epoch matches the stored one.
    assert (await broker.publish("m", "k", put(version=1), RECOVERABLE)).suppressed
    assert not (await broker.publish("m", "k", put(version=2), RECOVERABLE)).suppressed


async def test_unversioned_publish_keeps_the_stored_version(broker):
    await broker.publish("m", "k", put(b"v10", version=10), RECOVERABLE)
    assert not (await broker.publish("m", "k", put(b"plain"), RECOVERABLE)).suppressed
    late = await broker.publish("m", "k", put(b"v5", version=5), RECOVERABLE)
    assert late.suppressed and late.suppress_reason == SUPPRESS_VERSION
    assert not (await broker.publish("m", "k", put(b"v11", version=11), RECOVERABLE)).suppressed


async def test_checks_run_version_then_key_mode_then_cas(broker):
    r1 = await broker.publish("a", "k", put(version=10), RECOVERABLE)
    both = put(version=5, key_mode=KeyMode.IF_NEW)
    assert (await broker.publish("a", "k", both, RECOVERABLE)).suppress_reason == SUPPRESS_VERSION
    wrong = StreamPosition(999, r1.position.epoch)
    v_cas = put(version=5, expected_position=wrong)
    assert (await broker.publish("a", "k", v_cas, RECOVERABLE)).suppress_reason == SUPPRESS_VERSION
    km_cas = put(key_mode=KeyMode.IF_NEW, expected_position=wrong)
    res = await broker.publish("a", "k", km_cas, RECOVERABLE)
    assert res.suppress_reason == SUPPRESS_KEY_EXISTS
    # Idempotency comes first of all.
    await broker.publish("a", "k2", put(idempotency_key="i", version=100), RECOVERABLE)
    again = await broker.publish("a", "k2", put(idempotency_key="i", version=1), RECOVERABLE)
    assert again.suppress_reason == SUPPRESS_IDEMPOTENCY


# -- key modes ---------------------------------------------------------------------------------


async def test_key_mode_if_new(broker, events):
    await broker.subscribe(["m"])
    r1 = await broker.publish("m", "slot", put(b"p1", key_mode=KeyMode.IF_NEW), RECOVERABLE)
    r2 = await broker.publish("m", "slot", put(b"p2", key_mode=KeyMode.IF_NEW), RECOVERABLE)
    assert not r1.suppressed and r1.position.offset == 1
    assert r2.suppressed and r2.suppress_reason == SUPPRESS_KEY_EXISTS
    assert r2.position == r1.position
    assert await state_of(broker, "m") == {"slot": b"p1"}
    assert len(await stream_of(broker, "m")) == 1 and len(events.pubs_in("m")) == 1


async def test_key_mode_if_exists(broker):
    hb = put(b"hb1", key_mode=KeyMode.IF_EXISTS)
    r1 = await broker.publish("m", "p", hb, RECOVERABLE)
    assert r1.suppressed and r1.suppress_reason == SUPPRESS_KEY_NOT_FOUND
    assert await broker.stats("m") == 0
    await broker.publish("m", "p", put(b"initial"), RECOVERABLE)
    r3 = await broker.publish("m", "p", put(b"hb2", key_mode=KeyMode.IF_EXISTS), RECOVERABLE)
    assert not r3.suppressed
    assert await state_of(broker, "m") == {"p": b"hb2"}


async def test_refresh_ttl_on_suppress_keeps_a_key_alive_without_a_change(broker, clock, events):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=1.0, stream_size=100, stream_ttl=60.0, meta_ttl=1.0
    )
    await broker.subscribe(["m"])
    first = await broker.publish("m", "k", put(b"v", key_mode=KeyMode.IF_NEW), chopts)
    keepalive = put(b"v", key_mode=KeyMode.IF_NEW, refresh_ttl_on_suppress=True)
    for _ in range(5):
        clock.advance(0.8)
        res = await broker.publish("m", "k", keepalive, chopts)
        assert res.suppressed and res.suppress_reason == SUPPRESS_KEY_EXISTS
        broker.cleanup()
    # 4 s later than the key's first TTL: still there, in the same epoch, one stream entry.
    assert await state_of(broker, "m", chopts) == {"k": b"v"}
    assert len(events.pubs_in("m")) == 1
    again = await broker.publish("m", "k2", put(), chopts)
    assert again.position == StreamPosition(2, first.position.epoch)


async def test_suppressed_if_new_without_refresh_lets_the_key_expire(broker, clock, events):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=1.0, stream_size=100, stream_ttl=60.0, meta_ttl=1.0
    )
    await broker.subscribe(["m"])
    first = await broker.publish("m", "k", put(key_mode=KeyMode.IF_NEW), chopts)
    for _ in range(3):
        clock.advance(0.4)
        await broker.publish("m", "k", put(key_mode=KeyMode.IF_NEW), chopts)
        broker.cleanup()
    removal, epoch = events.pubs_in("m")[-1], events.pubs[-1][2]
    assert removal.removed and removal.key == "k" and epoch == first.position.epoch
    # Nothing refreshed the meta either: the channel is gone, the next use is a new epoch.
    assert broker.num_channels == 0
    st = await broker.read_state("m", chopts)
    assert st.position.epoch != first.position.epoch and st.position.offset == 0


async def test_rewriting_a_key_restarts_its_ttl(broker, clock, events):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=1.0, stream_size=100, stream_ttl=60.0, meta_ttl=10.0
    )
    await broker.subscribe(["m"])
    await broker.publish("m", "k", put(b"1"), chopts)
    clock.advance(0.8)
    await broker.publish("m", "k", put(b"2"), chopts)
    clock.advance(0.8)
    broker.cleanup()  # 1.6 s after the first write, 0.8 s after the second
    assert await state_of(broker, "m", chopts) == {"k": b"2"}
    clock.advance(0.3)
    broker.cleanup()
    assert await state_of(broker, "m", chopts) == {}
    assert [(p.removed, p.offset) for p in events.pubs_in("m")] == [
        (False, 1),
        (False, 2),
        (True, 3),
    ]


# -- CAS -----------------------------------------------------------------------------------------


async def test_cas_publish(broker):
    r1 = await broker.publish("m", "k", put(b"v1"), RECOVERABLE)
    epoch = r1.position.epoch
    ok = await broker.publish("m", "k", put(b"v2", expected_position=r1.position), RECOVERABLE)
    assert not ok.suppressed and ok.position.offset == 2
    stale = await broker.publish(
        "m", "k", put(b"v3", expected_position=StreamPosition(1, epoch)), RECOVERABLE
    )
    assert stale.suppressed and stale.suppress_reason == SUPPRESS_POSITION_MISMATCH
    assert stale.current_entry is not None
    assert (stale.current_entry.offset, stale.current_entry.data) == (2, b"v2")
    assert stale.position == StreamPosition(2, epoch)
    wrong_epoch = await broker.publish(
        "m", "k", put(b"v4", expected_position=StreamPosition(2, "wrong")), RECOVERABLE
    )
    assert wrong_epoch.suppress_reason == SUPPRESS_POSITION_MISMATCH
    missing = await broker.publish(
        "m", "absent", put(expected_position=StreamPosition(1, epoch)), RECOVERABLE
    )
    assert missing.suppress_reason == SUPPRESS_POSITION_MISMATCH
    assert missing.current_entry is None
    # The retry centrifuge documents: the current entry's offset and the outer epoch.
    retry_at = StreamPosition(stale.current_entry.offset, stale.position.epoch)
    retry = await broker.publish("m", "k", put(b"v5", expected_position=retry_at), RECOVERABLE)
    assert not retry.suppressed
    assert await state_of(broker, "m") == {"k": b"v5"}


async def test_cas_remove(broker):
    r1 = await broker.publish("m", "k", put(b"v1"), RECOVERABLE)
    epoch = r1.position.epoch
    wrong = await broker.remove(
        "m", "k", MapRemoveOptions(expected_position=StreamPosition(999, epoch)), RECOVERABLE
    )
    assert wrong.suppress_reason == SUPPRESS_POSITION_MISMATCH
    assert wrong.current_entry is not None and wrong.current_entry.data == b"v1"
    bad_epoch = await broker.remove(
        "m", "k", MapRemoveOptions(expected_position=StreamPosition(1, "bad")), RECOVERABLE
    )
    assert bad_epoch.suppress_reason == SUPPRESS_POSITION_MISMATCH
    ok = await broker.remove("m", "k", MapRemoveOptions(expected_position=r1.position), RECOVERABLE)
    assert not ok.suppressed and ok.position.offset == 2
    assert await state_of(broker, "m") == {}


async def test_cas_remove_of_a_missing_key_or_channel_is_a_position_mismatch(broker):
    r = await broker.publish("m", "other", put(), RECOVERABLE)
    cas = MapRemoveOptions(expected_position=StreamPosition(1, r.position.epoch))
    missing_key = await broker.remove("m", "never", cas, RECOVERABLE)
    assert missing_key.suppress_reason == SUPPRESS_POSITION_MISMATCH
    assert missing_key.position == r.position
    cas = MapRemoveOptions(expected_position=StreamPosition(5, "stale"))
    missing_channel = await broker.remove("nochannel", "k", cas, RECOVERABLE)
    assert missing_channel.suppress_reason == SUPPRESS_POSITION_MISMATCH


# -- remove --------------------------------------------------------------------------------------


async def test_remove_appends_and_delivers_a_removal_with_the_entry_tags(broker, events):
    await broker.subscribe(["m"])
    await broker.publish("m", "k1", put(b"1", tags={"role": "admin"}), PERSISTENT)
    await broker.publish("m", "k2", put(b"2", tags={"role": "admin"}), PERSISTENT)
    r = await broker.remove("m", "k1", MapRemoveOptions(), PERSISTENT)
    assert not r.suppressed and r.position.offset == 3
    (removal, epoch) = events.pubs[-1][1:]
    assert (removal.key, removal.removed, removal.data, removal.offset) == ("k1", True, b"", 3)
    assert removal.tags == {"role": "admin"} and removal.time > 0
    assert epoch == r.position.epoch
    assert list(await state_of(broker, "m", PERSISTENT)) == ["k2"]
    # Explicit tags replace the entry's.
    await broker.remove("m", "k2", MapRemoveOptions(tags={"role": "viewer"}), PERSISTENT)
    (last,) = (await broker.read_stream("m", PERSISTENT, limit=1, reverse=True)).publications
    assert last.removed and last.tags == {"role": "viewer"}


async def test_remove_of_a_missing_key_is_suppressed(broker, events):
    await broker.subscribe(["m", "none"])
    nothing = await broker.remove("none", "k", MapRemoveOptions(), RECOVERABLE)
    assert nothing.suppressed and nothing.suppress_reason == SUPPRESS_KEY_NOT_FOUND
    assert nothing.position == StreamPosition()
    r = await broker.publish("m", "k", put(), RECOVERABLE)
    missing = await broker.remove("m", "absent", MapRemoveOptions(), RECOVERABLE)
    assert missing.suppress_reason == SUPPRESS_KEY_NOT_FOUND and missing.position == r.position
    empty_key = await broker.remove("m", "", MapRemoveOptions(), RECOVERABLE)
    assert empty_key.suppressed
    assert len(await stream_of(broker, "m")) == 1 and len(events.pubs) == 1


# -- ephemeral and persistent ---------------------------------------------------------------------


async def test_ephemeral_channel_keeps_state_without_stream(broker, events):
    await broker.subscribe(["e"])
    r = await broker.publish("e", "k", put(b"v"), EPHEMERAL)
    assert not r.suppressed and r.position.offset == 0 and r.position.epoch != ""
    (pub, epoch) = events.pubs[-1][1:]
    assert (pub.key, pub.offset, epoch) == ("k", 0, "")
    st = await broker.read_state("e", EPHEMERAL)
    assert [(p.key, p.offset) for p in st.publications] == [("k", 0)]
    assert st.position == r.position
    sr = await broker.read_stream("e", EPHEMERAL)
    assert sr.publications == [] and sr.position == r.position
    rm = await broker.remove("e", "k", MapRemoveOptions(), EPHEMERAL)
    assert not rm.suppressed and rm.position.offset == 0
    (removal, epoch) = events.pubs[-1][1:]
    assert removal.removed and removal.offset == 0 and epoch == ""
    assert await broker.stats("e") == 0


async def test_ephemeral_channel_refuses_cas_and_versions(broker):
    cas = StreamPosition(1, "x")
    for call in (
        broker.publish("e", "k", put(expected_position=cas), EPHEMERAL),
        broker.publish("e", "k", put(version=1), EPHEMERAL),
        broker.remove("e", "k", MapRemoveOptions(expected_position=cas), EPHEMERAL),
    ):
        with pytest.raises(ClientError) as e:
            await call
        assert e.value.code == ERROR_INTERNAL
    assert broker.num_channels == 0


async def test_persistent_keys_never_expire(broker, clock):
    await broker.publish("p", "k", put(), PERSISTENT)
    clock.advance(10 * 365 * 86400.0)
    broker.cleanup()
    assert await state_of(broker, "p", PERSISTENT) == {"k": b"{}"}


# -- key TTL with the broker's own expiry loop -------------------------------------------------------


async def test_expired_keys_are_removed_like_remove_and_delivered():
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=0.2, stream_size=100, stream_ttl=60.0, meta_ttl=600.0
    )
    events = EngineEvents()
    broker = MemoryMapBroker(cleanup_interval=0.05)
    await broker.run(events)
    try:
        await broker.subscribe(["t"])
        await broker.publish("t", "k1", put(b"1", tags={"role": "a"}), chopts)
        r = await broker.publish("t", "k2", put(b"2"), chopts)
        started = time.monotonic()
        await events.next("pub", "t")
        await events.next("pub", "t")
        removals = [await events.next("pub", "t"), await events.next("pub", "t")]
        assert time.monotonic() - started >= 0.15  # not before their TTL
        # In deadline order, each with the next offset and the entry's own tags.
        got = [(p.key, p.removed, p.offset, p.tags, p.data) for p, _ in removals]
        assert got == [("k1", True, 3, {"role": "a"}, b""), ("k2", True, 4, None, b"")]
        assert {e for _, e in removals} == {r.position.epoch}
        assert await state_of(broker, "t", chopts) == {}
        stream = await stream_of(broker, "t", chopts)
        assert [(p.offset, p.removed) for p in stream] == [
            (1, False),
            (2, False),
            (3, True),
            (4, True),
        ]
    finally:
        await broker.close()


async def test_ephemeral_keys_expire_with_a_delivered_removal():
    chopts = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=0.2)
    events = EngineEvents()
    broker = MemoryMapBroker(cleanup_interval=0.05)
    await broker.run(events)
    try:
        await broker.subscribe(["e"])
        await broker.publish("e", "k", put(), chopts)
        await events.next("pub", "e")
        removal, epoch = await events.next("pub", "e")
        assert removal.removed and removal.key == "k" and removal.offset == 0 and epoch == ""
        assert await broker.stats("e") == 0
    finally:
        await broker.close()


# -- meta TTL, clear, bounds ---------------------------------------------------------------------------


async def test_meta_ttl_expiry_delivers_removals_then_starts_a_new_epoch(broker, clock, events):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=1.0, stream_size=100, stream_ttl=1.0, meta_ttl=2.0
    )
    await broker.subscribe(["m"])
    r = await broker.publish("m", "k", put(), chopts)
    clock.advance(1.5)
    await broker.read_state("m", chopts)  # a read refreshes the meta, not the key
    broker.cleanup()
    assert events.pubs[-1][1].removed
    clock.advance(1.0)
    broker.cleanup()
    assert broker.num_channels == 1  # 2 s since the read have not passed
    clock.advance(1.0)
    broker.cleanup()
    assert broker.num_channels == 0
    with pytest.raises(ClientError) as e:
        await broker.read_state("m", chopts, revision=StreamPosition(2, r.position.epoch))
    assert e.value.code == ERROR_UNRECOVERABLE_POSITION
    with pytest.raises(ClientError):
        await broker.read_stream("m", chopts, since=StreamPosition(2, r.position.epoch))
    fresh = await broker.publish("m", "k", put(), chopts)
    assert fresh.position.offset == 1 and fresh.position.epoch != r.position.epoch


async def test_clear_drops_state_stream_epoch_and_idempotency(broker, events):
    await broker.subscribe(["c", "other"])
    r = None
    for i in range(3):
        r = await broker.publish("c", f"k{i}", put(idempotency_key=f"i{i}"), RECOVERABLE)
    await broker.publish("other", "k", put(), RECOVERABLE)
    delivered = len(events.pubs)
    await broker.clear("c")
    assert len(events.pubs) == delivered  # nothing delivered
    assert await broker.stats("c") == 0
    st = await broker.read_state("c", RECOVERABLE)
    assert st.publications == [] and st.position.offset == 0
    assert r is not None and st.position.epoch != r.position.epoch
    assert await stream_of(broker, "c") == []
    again = await broker.publish("c", "k0", put(idempotency_key="i0"), RECOVERABLE)
    assert not again.suppressed and again.position.offset == 1
    assert await state_of(broker, "other") == {"k": b"{}"}
    await broker.clear("never-used")


async def test_memory_is_released_after_expiry(broker, clock):
    chopts = MapChannelOptions(
        MapMode.RECOVERABLE, key_ttl=1.0, stream_size=100, stream_ttl=1.0, meta_ttl=10.0
    )
    for i in range(50):
        await broker.publish(f"ch{i}", "k", put(idempotency_key="x"), chopts)
        await broker.read_state(f"eph{i}", EPHEMERAL)
    assert broker.num_channels == 100 and broker.num_idempotency_results == 50
    clock.advance(400.0)
    broker.cleanup()
    assert broker.num_channels == 0 and broker.num_idempotency_results == 0


# -- delivery -----------------------------------------------------------------------------------------


async def test_only_subscribed_channels_are_delivered(broker, events):
    await broker.publish("m", "k", put(b"before"), RECOVERABLE)
    await broker.subscribe(["m"])
    await broker.subscribe(["m"])  # idempotent
    await broker.publish("m", "k", put(b"during"), RECOVERABLE)
    await broker.publish("n", "k", put(b"elsewhere"), RECOVERABLE)
    await broker.unsubscribe(["m"])
    await broker.publish("m", "k", put(b"after"), RECOVERABLE)
    assert [(ch, p.data) for ch, p, _ in events.pubs] == [("m", b"during")]


async def test_delivered_publication_fields(broker, events):
    await broker.subscribe(["m"])
    info = ClientInfo("u", "c")
    r = await broker.publish("m", "k", put(b"v", tags={"a": "1"}, client_info=info), RECOVERABLE)
    ch, pub, epoch = events.pubs[-1]
    assert (ch, epoch) == ("m", r.position.epoch)
    assert (pub.key, pub.offset, pub.data, pub.tags, pub.info) == ("k", 1, b"v", {"a": "1"}, info)
    assert abs(pub.time - time.time() * 1000) < 60_000
    assert not pub.removed and not pub.delta and pub.prev_data is None


async def test_delta_hands_the_key_previous_value_along(broker, events):
    await broker.subscribe(["m"])
    await broker.publish("m", "k1", put(b"data1", delta=True), RECOVERABLE)
    await broker.publish("m", "k1", put(b"data1_updated", delta=True), RECOVERABLE)
    await broker.publish("m", "k2", put(b"data2", delta=True), RECOVERABLE)
    await broker.publish("m", "k2", put(b"data2_updated"), RECOVERABLE)
    got = [(p.key, p.delta, p.prev_data) for p in events.pubs_in("m")]
    assert got == [
        ("k1", True, None),
        ("k1", True, b"data1"),
        ("k2", True, None),
        ("k2", False, None),
    ]
    # prev_data is for the hub only: never stored.
    assert all(p.prev_data is None and not p.delta for p in await stream_of(broker, "m"))


async def test_a_failing_handler_does_not_fail_the_write(clock, caplog):
    class Failing(EngineEvents):
        def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
            raise RuntimeError("boom")

    broker = MemoryMapBroker(clock=clock, cleanup_interval=0)
    await broker.run(Failing())
    await broker.subscribe(["m"])
    r = await broker.publish("m", "k", put(), RECOVERABLE)
    assert not r.suppressed and await broker.stats("m") == 1
    assert "map publication handler failed" in caplog.text
    await broker.close()


async def test_close_stops_the_expiry_loop_and_delivery():
    chopts = MapChannelOptions(MapMode.EPHEMERAL, key_ttl=0.05)
    events = EngineEvents()
    broker = MemoryMapBroker(cleanup_interval=0.01)
    await broker.run(events)
    await broker.subscribe(["e"])
    await broker.close()
    await broker.publish("e", "k", put(), chopts)
    assert events.pubs == []
