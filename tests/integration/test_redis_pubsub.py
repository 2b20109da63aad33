"""RedisBroker fan-out over sharded PUB/SUB, control channels and reconnects (research §3, §6)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from app.errors import ClientError
from app.models import ClientInfo, HistoryFilter, PublishOptions
from tests.support.engine import EngineEvents

from .conftest import url_of, wait_until

HIST = PublishOptions(history_size=1000, history_ttl=300)


async def publish_until_delivered(broker, rec: EngineEvents, ch: str, timeout: float = 10.0) -> int:
    """Publishes to `ch` until one arrives; returns the attempts it took.

    After a reconnect nothing tells the outside when the resubscribe is done, so
    each attempt waits for the delivery event briefly and then tries again.
    """
    before = len(rec.pubs_in(ch))
    deadline = time.monotonic() + timeout
    attempts = 0
    while time.monotonic() < deadline:
        attempts += 1
        try:
            await broker.publish(ch, b"probe", PublishOptions())
        except ClientError:
            await asyncio.sleep(0.05)
            continue
        try:
            await rec.wait_for(lambda: len(rec.pubs_in(ch)) > before, 0.2)
            return attempts
        except TimeoutError:
            continue
    raise AssertionError(f"no delivery on {ch!r} within {timeout}s")


async def control_until_delivered(broker, rec: EngineEvents, timeout: float = 10.0) -> None:
    before = len(rec.controls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await broker.publish_control(b"ping")
        except ClientError:
            await asyncio.sleep(0.05)
            continue
        try:
            await rec.wait_for(lambda: len(rec.controls) > before, 0.2)
            return
        except TimeoutError:
            continue
    raise AssertionError("no control delivery")


@pytest.fixture
async def engine(make_engine, redis_proc, rdb):
    broker, _, rec = await make_engine(url_of(redis_proc))
    return broker, rec, rdb


async def test_pubsub_order_equals_offset_order_under_concurrency(engine):
    broker, rec, _ = engine
    await broker.subscribe(["ch"])
    n = 300
    results = await asyncio.gather(*(broker.publish("ch", b"%d" % i, HIST) for i in range(n)))
    pubs = await rec.wait_pubs("ch", n)
    assert [p.offset for p in pubs] == list(range(1, n + 1))
    # Each delivered publication is the one whose publish returned that offset.
    by_offset = {r.position.offset: b"%d" % i for i, r in enumerate(results)}
    assert all(p.data == by_offset[p.offset] for p in pubs)
    epoch = results[0].position.epoch
    assert {e for _, _, e in rec.pubs} == {epoch}


async def test_publish_from_another_node_is_delivered(make_engine, redis_proc, rdb):
    a, _, rec_a = await make_engine(url_of(redis_proc), node_id="a")
    b, _, rec_b = await make_engine(url_of(redis_proc), node_id="b")
    await a.subscribe(["ch"])
    r = await b.publish("ch", b"hello", HIST)
    (p,) = await rec_a.wait_pubs("ch", 1)
    assert (p.data, p.offset, rec_a.pubs[0][2]) == (b"hello", 1, r.position.epoch)
    assert rec_b.pubs == []  # b never subscribed


async def test_publish_right_after_subscribe_is_always_delivered(make_engine, redis_proc, rdb):
    a, _, rec = await make_engine(url_of(redis_proc), node_id="a")
    b, _, _ = await make_engine(url_of(redis_proc), node_id="b")
    # One channel at a time: subscribe() must return only after SSUBSCRIBE is confirmed.
    for i in range(100):
        ch = f"one.{i}"
        await a.subscribe([ch])
        await b.publish(ch, b"x", PublishOptions())
    # A batch bigger than one SSUBSCRIBE command (512 channels).
    many = [f"many.{i}" for i in range(1200)]
    await a.subscribe(many)
    await asyncio.gather(*(b.publish(ch, b"y", PublishOptions()) for ch in many))
    await rec.wait_for(lambda: len(rec.pubs) == 1300)
    assert {ch for ch, _, _ in rec.pubs} == {f"one.{i}" for i in range(100)} | set(many)


async def test_subscribe_is_idempotent(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["ch"])
    await broker.subscribe(["ch", "ch"])
    assert await rdb.execute_command("PUBSUB", "SHARDNUMSUB", "centrifugo.client.ch") == [
        "centrifugo.client.ch",
        1,
    ]
    await broker.publish("ch", b"x", PublishOptions())
    await broker.publish("ch", b"sentinel", PublishOptions())
    pubs = await rec.wait_pubs("ch", 2)
    assert [p.data for p in pubs] == [b"x", b"sentinel"]  # one delivery each, not two


async def _ssubscribe_calls(rdb) -> int:
    stats = await rdb.info("commandstats")
    return int(stats.get("cmdstat_ssubscribe", {}).get("calls", 0))


async def test_a_stream_of_subscribes_shares_commands(engine):
    """A connect storm: subscribes arriving one loop turn after another leave in a few
    SSUBSCRIBE commands (each write waits up to FLUSH_DELAY once the link is busy), not
    in one command and one socket write each."""
    broker, rec, rdb = engine
    await broker.subscribe(["warm"])
    before = await _ssubscribe_calls(rdb)
    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(broker.subscribe([f"storm{i}"])))
        await asyncio.sleep(0)  # the next subscribe comes in a loop turn of its own
    await asyncio.gather(*tasks)
    calls = await _ssubscribe_calls(rdb) - before
    assert 1 <= calls <= 10, calls
    # Every channel is subscribed for real: a publication to the last one arrives.
    await broker.publish("storm19", b"x", PublishOptions())
    assert [p.data for p in await rec.wait_pubs("storm19", 1)] == [b"x"]


async def test_unsubscribe_stops_delivery(engine):
    broker, rec, rdb = engine
    await broker.subscribe(["ch", "other"])
    await broker.publish("ch", b"before", PublishOptions())
    await rec.wait_pubs("ch", 1)
    await broker.unsubscribe(["ch"])
    # SUNSUBSCRIBE travels on the same connection as this SSUBSCRIBE: once the latter is
    # confirmed, Redis has processed the former.
    await broker.subscribe(["barrier"])
    assert await rdb.execute_command("PUBSUB", "SHARDNUMSUB", "centrifugo.client.ch") == [
        "centrifugo.client.ch",
        0,
    ]
    await broker.publish("ch", b"after", PublishOptions())
    await broker.publish("other", b"sentinel", PublishOptions())
    await rec.wait_pubs("other", 1)
    assert [p.data for p in rec.pubs_in("ch")] == [b"before"]
    # Unsubscribing twice or unknown channels is harmless; subscribing again resumes delivery.
    await broker.unsubscribe(["ch", "never"])
    await broker.subscribe(["ch"])
    await broker.publish("ch", b"again", PublishOptions())
    pubs = await rec.wait_pubs("ch", 2)
    assert [p.data for p in pubs] == [b"before", b"again"]


async def test_join_and_leave(engine):
    broker, rec, _ = engine
    await broker.subscribe(["ch"])
    info = ClientInfo("u1", "c1", b'{"n":1}', b"\x01chan")
    await broker.publish_join("ch", info)
    await broker.publish_leave("ch", ClientInfo("u2", "c2"))
    await broker.publish_join("unsubscribed", info)
    await broker.publish("ch", b"sentinel", PublishOptions())
    await rec.wait_pubs("ch", 1)
    assert rec.joins == [("ch", info)]
    assert rec.leaves == [("ch", ClientInfo("u2", "c2"))]
    # Join/leave are never stored.
    assert (await broker.history("ch", HistoryFilter(limit=-1))).publications == []


async def test_control_broadcast_and_unicast(make_engine, redis_proc, rdb):
    a, _, rec_a = await make_engine(url_of(redis_proc), node_id="node-a")
    b, _, rec_b = await make_engine(url_of(redis_proc), node_id="node-b")
    await a.publish_control(b"to-all")
    await rec_a.wait_for(lambda: b"to-all" in rec_a.controls)
    await rec_b.wait_for(lambda: b"to-all" in rec_b.controls)
    await a.publish_control(b"to-b", "node-b")
    await rec_b.wait_for(lambda: b"to-b" in rec_b.controls)
    await b.publish_control(b"to-a", "node-a")
    await a.publish_control(b"end")
    await rec_a.wait_for(lambda: b"end" in rec_a.controls)
    await rec_b.wait_for(lambda: b"end" in rec_b.controls)
    assert rec_a.controls == [b"to-all", b"to-a", b"end"]
    assert rec_b.controls == [b"to-all", b"to-b", b"end"]
    # A unicast to an unknown node reaches nobody.
    await a.publish_control(b"lost", "node-x")
    await a.publish_control(b"end2")
    await rec_b.wait_for(lambda: b"end2" in rec_b.controls)
    await rec_a.wait_for(lambda: b"end2" in rec_a.controls)
    assert b"lost" not in rec_a.controls + rec_b.controls


async def test_client_kill_pubsub_resubscribes_by_itself(engine):
    broker, rec, rdb = engine
    channels = [f"ch.{i}" for i in range(600)]  # more than one resubscribe batch
    await broker.subscribe(channels)
    await broker.publish("ch.0", b"before", HIST)
    await rec.wait_pubs("ch.0", 1)
    killed = await rdb.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 2  # control + data connection of this node
    await publish_until_delivered(broker, rec, "ch.599")
    await control_until_delivered(broker, rec)
    await wait_until(lambda: broker.healthy, what="healthy")
    # Every channel is back, with offsets continuing in the same stream.
    numsub = await rdb.execute_command(
        "PUBSUB", "SHARDNUMSUB", *[f"centrifugo.client.{c}" for c in channels]
    )
    assert numsub[1::2] == [1] * len(channels)
    r = await broker.publish("ch.0", b"after", HIST)
    pubs = await rec.wait_pubs("ch.0", 2)
    assert (pubs[-1].data, pubs[-1].offset) == (b"after", r.position.offset) == (b"after", 2)
    clients = await rdb.client_list(_type="pubsub")
    assert len(clients) == 2 and {c["name"] for c in clients} == {"centrifugo-py-pubsub"}


async def test_server_restart_reconnects_and_health_follows(make_engine, restart_proc):
    broker, _, rec = await make_engine(
        url_of(restart_proc), io_timeout="1s", connect_timeout="500ms"
    )
    await broker.subscribe(["ch"])
    await broker.publish("ch", b"before", PublishOptions())
    await rec.wait_pubs("ch", 1)
    assert broker.healthy
    restart_proc.stop()
    await wait_until(lambda: not broker.healthy, 5, "unhealthy after stop")
    # Down: publishes fail fast with an internal error, they do not hang.
    for opts in (PublishOptions(), HIST):
        start = time.monotonic()
        with pytest.raises(ClientError) as e:
            await broker.publish("ch", b"x", opts)
        assert e.value.code == 100
        assert time.monotonic() - start < 1.0
    assert not broker.healthy
    restart_proc.start()
    await wait_until(lambda: broker.healthy, 10, "healthy after restart")
    await publish_until_delivered(broker, rec, "ch")
    await control_until_delivered(broker, rec)
    assert rec.pubs_in("ch")[0].data == b"before"


async def test_frozen_server_publish_fails_within_io_timeout(make_engine, restart_proc):
    if not restart_proc.alive():
        restart_proc.start()
    broker, _, rec = await make_engine(
        url_of(restart_proc), io_timeout="500ms", connect_timeout="500ms"
    )
    await broker.publish("ch", b"warm", PublishOptions())  # a pooled connection exists
    pid = restart_proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for opts in (PublishOptions(), HIST):
            start = time.monotonic()
            with pytest.raises(ClientError) as e:
                await broker.publish("ch", b"x", opts)
            elapsed = time.monotonic() - start
            assert e.value.code == 100
            assert elapsed < 0.5 + 0.5, f"publish took {elapsed:.2f}s against a frozen redis"
    finally:
        os.kill(pid, signal.SIGCONT)
    await broker.subscribe(["ch"])
    await publish_until_delivered(broker, rec, "ch")


async def test_frozen_server_subscribe_fails_within_io_timeout(make_engine, restart_proc):
    if not restart_proc.alive():
        restart_proc.start()
    broker, _, rec = await make_engine(
        url_of(restart_proc), io_timeout="500ms", connect_timeout="500ms"
    )
    await broker.subscribe(["warm"])  # the pub/sub connection is up and confirmed
    pid = restart_proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        # Subscribes made a moment apart share the deadline check; each fails on time.
        first = asyncio.ensure_future(broker.subscribe(["frozen.a"]))
        await asyncio.sleep(0.2)  # a later subscribe, not synchronisation
        second = asyncio.ensure_future(broker.subscribe(["frozen.b", "frozen.c"]))
        results = await asyncio.gather(first, second, return_exceptions=True)
        elapsed = time.monotonic() - start
        assert all(isinstance(r, ClientError) and r.code == 100 for r in results), results
        assert elapsed < 0.2 + 0.5 + 0.5, f"subscribe took {elapsed:.2f}s against a frozen redis"
    finally:
        os.kill(pid, signal.SIGCONT)
    await broker.subscribe(["frozen.a"])
    await publish_until_delivered(broker, rec, "frozen.a")
