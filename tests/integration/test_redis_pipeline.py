"""Implicit pipelining (app/engines/redis/pipeline.py) against real redis-server processes.

Commands issued in one event-loop turn must reach Redis together and their replies must reach
the right callers in issue order; retries after a lost connection, a flushed script cache or a
demoted master must keep that order. "Together" is checked with Redis' own counter of socket
reads (`total_reads_processed`): one read per command without pipelining, a handful with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.api import request
from app.api.executor import ApiExecutor
from app.config import load_config
from app.engines.redis import create_redis_engine
from app.engines.redis.connect import Endpoint
from app.engines.redis.pipeline import AutoPipeline, Script
from app.engines.redis.publish import HISTORY_ITEMS_PER_CALL
from app.errors import ClientError
from app.models import PublishOptions, PublishResult, StreamPosition
from app.node import Node
from tests.support.engine import channels_in_partitions, redis_engine_config

from .conftest import redis_server_fixture, url_of

HIST = PublishOptions(history_size=1000, history_ttl=300)

# Servers of this module only: tests here reconfigure (ACL, REPLICAOF) or freeze them.
pl_redis = redis_server_fixture()
pl_redis2 = redis_server_fixture()


def endpoint(port: int) -> Any:
    async def resolve() -> Endpoint:
        return Endpoint(port=port)

    return resolve


async def reads(client: Redis) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


@pytest.fixture
async def own(pl_redis: Any) -> AsyncIterator[Redis]:
    """A plain client of this module's server, after FLUSHALL and with its config restored."""
    client = Redis(host="127.0.0.1", port=pl_redis.port)
    await client.flushall()
    await client.script_flush()
    yield client
    await client.execute_command("REPLICAOF", "NO", "ONE")
    await client.execute_command("ACL", "DELUSER", "pl")
    await client.aclose()


@pytest.fixture
async def pipes() -> AsyncIterator[list[AutoPipeline]]:
    made: list[AutoPipeline] = []
    yield made
    for p in made:
        await p.close()


def new_pipe(made: list[AutoPipeline], port: int, **kw: Any) -> AutoPipeline:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("io_timeout", 2.0)
    p = AutoPipeline(kw.pop("resolve", None) or endpoint(port), **kw)
    made.append(p)
    return p


# --- batching and reply routing ---


async def test_one_turn_is_one_write_and_replies_route_back(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    assert await pipe.execute("PING") == b"PONG"  # connected
    await own.set("str", "x")
    before = await reads(own)
    futs = []
    for i in range(600):
        if i == 300:
            futs.append(pipe.execute("LPUSH", "str", "y"))  # WRONGTYPE: fails only its caller
        futs.append(pipe.execute("INCR", "n") if i % 2 else pipe.execute("ECHO", b"e%d" % i))
    results = await asyncio.gather(*futs, return_exceptions=True)
    after = await reads(own)
    wrong = results.pop(300)
    assert isinstance(wrong, ResponseError) and str(wrong).startswith("WRONGTYPE")
    expected = [i // 2 + 1 if i % 2 else b"e%d" % i for i in range(600)]
    assert results == expected
    # 600 commands (~20 KB) arrive in a few socket reads, not 600 (+1: our INFO).
    assert after - before < 20, after - before


APPEND = Script(
    "append", "redis.call('rpush', KEYS[1], ARGV[1]); return redis.call('llen', KEYS[1])"
)


async def test_scripts_load_with_each_new_connection(pl_redis, own, pipes) -> None:
    # As after a Redis restart: the cache is empty when the pipeline (re)connects. The
    # handshake loads the scripts ahead of the waiting calls: no NOSCRIPT, order kept.
    pipe = new_pipe(pipes, pl_redis.port, scripts=[APPEND])
    first = [pipe.evalsha(APPEND, ["l"], [b"s%d" % i]) for i in range(50)]
    second = [pipe.execute("RPUSH", "l", b"p%d" % i) for i in range(50)]
    assert await asyncio.gather(*first) == list(range(1, 51))
    assert await asyncio.gather(*second) == list(range(51, 101))
    assert await own.lrange("l", 0, -1) == [b"s%d" % i for i in range(50)] + [
        b"p%d" % i for i in range(50)
    ]
    stats = await own.info("commandstats")
    assert stats["cmdstat_evalsha"] == {**stats["cmdstat_evalsha"], "failed_calls": 0}
    assert "cmdstat_eval" not in stats


async def test_noscript_on_a_live_connection_resends_as_eval_in_order(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port)  # no preloading: every first call gets NOSCRIPT
    first = [pipe.evalsha(APPEND, ["l"], [b"s%d" % i]) for i in range(50)]
    assert await asyncio.gather(*first) == list(range(1, 51))
    assert await own.lrange("l", 0, -1) == [b"s%d" % i for i in range(50)]
    stats = await own.info("commandstats")
    assert stats["cmdstat_evalsha"]["failed_calls"] == 50
    assert stats["cmdstat_eval"]["calls"] == 50
    # EVAL loaded it: plain EVALSHA from here on.
    assert await pipe.evalsha(APPEND, ["l"], [b"z"]) == 51
    assert (await own.info("commandstats"))["cmdstat_eval"]["calls"] == 50


# --- connection errors ---


async def test_commands_in_flight_on_a_killed_connection_retry_once_in_order(
    pl_redis, own, pipes
) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    my_id = await pipe.execute("CLIENT", "ID")
    # Redis answers a kill of the connection itself, then closes it without running the
    # commands behind the kill: they were written but their replies never come.
    futs = [pipe.execute("INCR", "n") for _ in range(5)]
    futs.append(pipe.execute("CLIENT", "KILL", "ID", my_id, "SKIPME", "no"))
    futs += [pipe.execute("INCR", "n") for _ in range(5)]
    assert await asyncio.gather(*futs) == [1, 2, 3, 4, 5, 1, 6, 7, 8, 9, 10]
    assert await pipe.execute("CLIENT", "ID") != my_id  # a new connection
    assert int(await own.get("n")) == 10


async def test_a_command_fails_after_its_one_retry(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    await pipe.execute("PING")
    kill_all = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
    # First connection: the first kill is answered; the second kill and the INCR are retried on
    # a new connection, where the second kill is answered and the INCR dies a second time.
    k1, k2 = pipe.execute(*kill_all), pipe.execute(*kill_all)
    incr = pipe.execute("INCR", "n")
    assert await k1 >= 1 and await k2 >= 1
    with pytest.raises(RedisConnectionError):
        await incr
    assert await own.get("n") is None
    assert await pipe.execute("INCR", "n") == 1  # and the pipeline carries on


async def test_refused_connect_fails_fast_then_recovers(pl_redis, own, pipes) -> None:
    # pl_redis is not stopped here; a port nobody listens on stands in for a dead server.
    port = {"p": 1}

    async def resolve() -> Endpoint:
        return Endpoint(port=port["p"])

    pipe = new_pipe(pipes, 0, resolve=resolve)
    start = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await pipe.execute("PING")
    assert time.monotonic() - start < 1.0
    port["p"] = pl_redis.port
    assert await pipe.execute("PING") == b"PONG"


async def test_no_progress_for_io_timeout_fails_in_flight_commands(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port, io_timeout=0.3, connect_timeout=0.3)
    await pipe.execute("PING")
    os.kill(pl_redis.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await pipe.execute("INCR", "n")
        elapsed = time.monotonic() - start
        assert 0.25 < elapsed < 0.9, elapsed
    finally:
        os.kill(pl_redis.pid, signal.SIGCONT)
    # A new connection once Redis answers again; the timed-out INCR may or may not have run
    # (as with any client), the next one runs exactly once.
    before = int(await own.get("n") or 0)
    assert await pipe.execute("INCR", "n") == before + 1


@asynccontextmanager
async def failover(
    pl_redis: Any, pl_redis2: Any, own: Redis, pipes: list[AutoPipeline]
) -> AsyncIterator[tuple[AutoPipeline, Redis]]:
    """A pipeline whose resolver answers as a Sentinel would, with one write applied on the
    first master; inside the block the first master is demoted (its master unreachable: it
    keeps serving reads, refuses writes with READONLY) and the second is named master.
    Yields the pipeline and a client of the new master."""
    master = {"port": pl_redis.port}

    async def resolve() -> Endpoint:
        return Endpoint(port=master["port"])

    pipe = new_pipe(pipes, 0, resolve=resolve)
    assert await pipe.execute("SET", "k", "1") == b"OK"
    other = Redis(host="127.0.0.1", port=pl_redis2.port)
    try:
        await other.flushall()
        await own.execute_command("REPLICAOF", "127.0.0.1", "1")
        master["port"] = pl_redis2.port
        yield pipe, other
    finally:
        await other.aclose()


async def test_readonly_from_a_demoted_master_reconnects_to_the_new_one(
    pl_redis, pl_redis2, own, pipes
) -> None:
    async with failover(pl_redis, pl_redis2, own, pipes) as (pipe, other):
        assert await pipe.execute("SET", "k", "2") == b"OK"
        assert await other.get("k") == b"2"
        assert await own.get("k") == b"1"


# --- groups (execute_many) ---


def packed(*args: Any) -> bytes:
    from app.engines.redis.resp import pack_command

    return pack_command(args)


async def test_a_group_answers_each_command_in_place_in_issue_order(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    await own.set("str", "x")
    before = pipe.execute("INCR", "n")
    group = pipe.execute_many(
        [
            packed("INCR", "n"),
            packed("LPUSH", "str", "y"),
            packed("ECHO", b"e"),
            packed("INCR", "n"),
        ]
    )
    after = pipe.execute("INCR", "n")
    assert await before == 1
    first, wrong, echo, last = await group
    assert (first, echo, last) == (2, b"e", 3)
    assert isinstance(wrong, ResponseError) and str(wrong).startswith("WRONGTYPE")
    assert await after == 4


async def test_a_group_cut_by_a_lost_connection_resends_only_its_unanswered_commands(
    pl_redis, own, pipes
) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    my_id = await pipe.execute("CLIENT", "ID")
    incr = packed("INCR", "n")
    # Redis answers the kill of its own connection, then closes it without running the rest.
    group = pipe.execute_many(
        [incr] * 3 + [packed("CLIENT", "KILL", "ID", my_id, "SKIPME", "no")] + [incr] * 3
    )
    assert await group == [1, 2, 3, 1, 4, 5, 6]
    assert int(await own.get("n")) == 6  # the answered three ran once


async def test_a_group_fails_its_unanswered_commands_after_one_resend(pl_redis, own, pipes) -> None:
    pipe = new_pipe(pipes, pl_redis.port)
    await pipe.execute("PING")
    kill_all = packed("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
    incr = packed("INCR", "n")
    first, k1, k2, last = await pipe.execute_many([incr, kill_all, kill_all, incr])
    assert first == 1 and k1 >= 1 and k2 >= 1
    assert isinstance(last, RedisConnectionError)
    assert int(await own.get("n")) == 1
    assert await pipe.execute("INCR", "n") == 2  # and the pipeline carries on


async def test_a_group_refused_by_a_demoted_master_fails_and_the_next_command_reconnects(
    pl_redis, pl_redis2, own, pipes
) -> None:
    async with failover(pl_redis, pl_redis2, own, pipes) as (pipe, other):
        refused = await pipe.execute_many([packed("SET", "k", "2"), packed("SET", "j", "2")])
        assert all(isinstance(r, ResponseError) and str(r).startswith("READONLY") for r in refused)
        assert await pipe.execute("SET", "k", "3") == b"OK"
        assert await other.get("k") == b"3"


async def test_auth_and_db_are_pipelined_with_the_first_commands(pl_redis, own) -> None:
    await own.execute_command("ACL", "SETUSER", "pl", "on", ">s3cret", "~*", "&*", "+@all")
    rcfg = load_config(
        None,
        env={},
        flags={
            "engine.type": "redis",
            "engine.redis.address": f"redis://pl:s3cret@127.0.0.1:{pl_redis.port}/5",
        },
    ).engine.redis
    broker, presence = create_redis_engine(rcfg)
    await broker.shards[0].connect()
    try:
        res = await broker.publish("ch", b"x", HIST)
        assert res.position.offset == 1
        await own.select(5)
        assert await own.xlen("centrifugo.stream.ch") == 1
        await own.select(0)
        assert await own.exists("centrifugo.stream.ch") == 0
    finally:
        await broker.shards[0].close()


async def test_a_failed_handshake_fails_the_commands_behind_it(pl_redis, own, pipes) -> None:
    await own.execute_command("ACL", "SETUSER", "pl", "on", ">s3cret", "~*", "&*", "+@all")

    async def wrong() -> Endpoint:
        return Endpoint(port=pl_redis.port, username="pl", password="wrong")

    pipe = new_pipe(pipes, 0, resolve=wrong)
    futs = [pipe.execute("INCR", "n") for _ in range(3)]
    for result in await asyncio.gather(*futs, return_exceptions=True):
        assert isinstance(result, RedisConnectionError) and "handshake" in str(result)
    assert await own.get("n") is None


# --- through the engine ---


async def test_concurrent_publishes_apply_and_arrive_in_issue_order(
    make_engine, redis_proc, rdb
) -> None:
    broker, _, rec = await make_engine(url_of(redis_proc))
    await broker.subscribe(["ch"])
    before = await reads(rdb)
    results = await asyncio.gather(*(broker.publish("ch", b"%d" % i, HIST) for i in range(1000)))
    assert [r.position.offset for r in results] == list(range(1, 1001))
    assert len({r.position.epoch for r in results}) == 1
    pubs = await rec.wait_pubs("ch", 1000)
    assert [(p.offset, p.data) for p in pubs] == [(i + 1, b"%d" % i) for i in range(1000)]
    assert await reads(rdb) - before < 100


async def test_publish_many_applies_in_order_and_fails_per_item(
    make_engine, redis_proc, rdb
) -> None:
    broker, _, rec = await make_engine(url_of(redis_proc))
    await broker.subscribe(["a", "b"])
    await rdb.set("centrifugo.stream.meta.bad", "not a hash")  # history_add: WRONGTYPE
    items = [(("a", "b", "bad")[i % 3], b"%d" % i, HIST) for i in range(300)]
    items.append(("a", b"plain", PublishOptions()))
    before = await reads(rdb)
    results = await broker.publish_many(items)
    assert await reads(rdb) - before < 30
    assert [r.position.offset for r in results[0:300:3]] == list(range(1, 101))
    assert [r.position.offset for r in results[1:300:3]] == list(range(1, 101))
    assert all(isinstance(r, ClientError) and r.code == 100 for r in results[2:300:3])
    assert results[300] == PublishResult(StreamPosition())
    pubs = await rec.wait_pubs("a", 101)
    assert [p.data for p in pubs] == [b"%d" % i for i in range(0, 300, 3)] + [b"plain"]


async def test_publish_many_keeps_a_channels_order_across_options(
    make_engine, redis_proc, rdb
) -> None:
    """History publications of a batch share script calls (HISTORY_ITEMS_PER_CALL each); a
    publication without history in between still arrives in its place."""
    broker, _, rec = await make_engine(url_of(redis_proc))
    await broker.subscribe(["a"])
    n = 2 * HISTORY_ITEMS_PER_CALL + 10
    items = [("a", b"%d" % i, HIST) for i in range(n)]
    items.insert(70, ("a", b"plain", PublishOptions()))
    # Plain ones go as one SPUBLISH group, an idempotent one by its script: still in place.
    items[20:20] = [("a", b"p1", PublishOptions()), ("a", b"p2", PublishOptions())]
    items.insert(21, ("a", b"idem", PublishOptions(idempotency_key="k")))
    results = await broker.publish_many(items)
    offsets = [r.position.offset for r in results]  # type: ignore[union-attr]
    assert offsets == list(range(1, 21)) + [0, 0, 0] + list(range(21, 71)) + [0] + list(
        range(71, n + 1)
    )
    pubs = await rec.wait_pubs("a", n + 4)
    assert [p.data for p in pubs] == [data for _, data, _ in items]


@pytest.fixture
async def redis_node(tmp_path: Path, redis_proc: Any, rdb: Redis) -> AsyncIterator[Node]:
    cfg = {
        "engine": {"type": "redis", "redis": {"address": url_of(redis_proc)}},
        "channel": {"without_namespace": {"history_size": 1000, "history_ttl": "300s"}},
        "http_api": {"key": "k"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    conf = load_config(str(path), env={})
    broker, presence = create_redis_engine(conf.engine.redis)
    node = Node(conf, broker, presence)
    await node.start()
    try:
        yield node
    finally:
        await node.shutdown()


async def test_sequential_batch_applies_in_order_in_few_round_trips(
    redis_node: Node, rdb: Redis
) -> None:
    api = ApiExecutor(redis_node)
    commands: list[dict[str, Any]] = [
        {"publish": {"channel": "b", "data": {"n": i}}} for i in range(100)
    ]
    commands.insert(60, {"history": {"channel": "b", "limit": -1}})  # a barrier
    commands.insert(30, {"publish": {"channel": "", "data": {}}})  # fails alone (107)
    before = await reads(rdb)
    params = request.params("batch", orjson.dumps({"commands": commands}))
    replies = (await api.call("batch", params))["replies"]
    after = await reads(rdb)
    assert replies[30] == {"error": {"code": 107, "message": "bad request"}}
    hist = replies[61]["history"]
    assert [p["offset"] for p in hist["publications"]] == list(range(1, 61))
    published = [r["publish"] for i, r in enumerate(replies) if i not in (30, 61)]
    assert [p["offset"] for p in published] == list(range(1, 101))
    stored = await rdb.xrange("centrifugo.stream.b")
    assert [json.loads(f["d"].split("\n", 1)[1])["n"] for _, f in stored] == list(range(100))
    # Two runs of publishes and the history read: a few reads, not one per command.
    assert after - before < 30, after - before


async def test_parallel_batch_keeps_per_channel_order(redis_node: Node, rdb: Redis) -> None:
    api = ApiExecutor(redis_node)
    commands = [{"publish": {"channel": f"p{i % 3}", "data": {"n": i}}} for i in range(300)]
    params = request.params("batch", orjson.dumps({"commands": commands, "parallel": True}))
    replies = (await api.call("batch", params))["replies"]
    for ch in range(3):
        offsets = [r["publish"]["offset"] for i, r in enumerate(replies) if i % 3 == ch]
        assert offsets == list(range(1, 101))


# --- Redis Cluster: one pipeline per master, redis-py on redirections ---


@pytest.fixture
async def cluster_engine(redis_cluster: Any) -> AsyncIterator[tuple[Any, Any]]:
    prefix = "pl" + uuid.uuid4().hex[:8]
    broker, presence = create_redis_engine(redis_engine_config(redis_cluster.address, prefix))
    await broker.shards[0].connect()
    try:
        yield broker, redis_cluster
    finally:
        await broker.shards[0].close()


def node_reads(cluster: Any) -> dict[int, int]:
    out = {}
    for n in cluster.nodes:
        with n.client() as c:
            out[n.port] = int(c.info("stats")["total_reads_processed"])
    return out


async def test_cluster_commands_pipeline_per_master(cluster_engine) -> None:
    broker, cluster = cluster_engine
    channels = channels_in_partitions("plc")
    before = node_reads(cluster)
    results = await asyncio.gather(
        *(broker.publish(ch, b"%d" % n, HIST) for n in range(20) for ch in channels)
    )
    after = node_reads(cluster)
    offsets: dict[str, list[int]] = {}
    for ch, r in zip([ch for _ in range(20) for ch in channels], results, strict=True):
        offsets.setdefault(ch, []).append(r.position.offset)
    assert offsets == {ch: list(range(1, 21)) for ch in channels}
    shard = broker.shards[0]
    assert sorted(shard._node_pipes) == sorted(f"127.0.0.1:{p}" for p in cluster.ports)
    # 320 scripts over 3 masters: a few reads each (+1 for our INFO), not ~107 each.
    assert all(after[p] - before[p] < 30 for p in cluster.ports), (before, after)


async def test_cluster_stale_slot_map_falls_back_to_redis_py(cluster_engine) -> None:
    broker, cluster = cluster_engine
    shard = broker.shards[0]
    ch = "stale"
    key = shard.keys.stream(ch)
    slot = key_slot(key.encode())
    nodes = shard.client.nodes_manager
    right = nodes.slots_cache[slot][0]
    wrong = next(n for n in nodes.nodes_cache.values() if n.name != right.name)
    nodes.slots_cache[slot] = [wrong]  # as after a resharding nobody told us about
    res = await broker.publish(ch, b"x", HIST)  # MOVED from `wrong`, then redis-py's path
    assert res.position.offset == 1
    assert nodes.slots_cache[slot][0].name == right.name  # redis-py learnt the move
    with cluster.node(right.port).client() as c:
        assert c.xlen(key) == 1
    res = await broker.publish(ch, b"y", HIST)  # pipelined to the right master again
    assert res.position.offset == 2
