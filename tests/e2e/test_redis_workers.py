"""Redis engine with several gunicorn workers: one node per worker, fan-out through Redis.

A real redis-server (no persistence, free port) and `python -m app --workers 2`. Clients land
on whichever worker accepts their socket; psutil tells which one (the worker process holding
the server end of the TCP connection), so every cross-worker claim is checked against where the
connections really are. Server API calls use a new TCP connection each, landing on random
workers too.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .helpers import ServerHandle
from .redis_e2e_helpers import (
    ApiClient,
    RedisProcess,
    SdkSubscriber,
    WsClient,
    redis_config,
    sdk_local_port,
    wait_all,
    worker_of,
    worker_pids,
)

# No more workers than the 2 cores CI has: with more, the kernel wakes the workers waiting on
# the shared listening socket in the same order every time, the two first woken take the
# connection, and the last one almost never gets any (seen: 1 of 60 connections).
WORKERS = 2


def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def srv(server_factory, redis_server: RedisProcess) -> ServerHandle:
    return server_factory(redis_config(redis_server.port), workers=WORKERS)


@pytest.fixture
async def api(srv: ServerHandle) -> AsyncIterator[ApiClient]:
    client = ApiClient(srv)
    yield client
    await client.close()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Clients (WsClient / SdkSubscriber) appended here are closed after the test."""
    items: list[Any] = []
    yield items
    for item in items:
        if isinstance(item, SdkSubscriber):
            await item.stop()
        else:
            await item.close()


async def raw_client(srv: ServerHandle, user: str, closing: list[Any], name: str = "") -> WsClient:
    c = WsClient(srv.ws_url, name or user)
    closing.append(c)
    await c.connect(srv.token(user))
    return c


async def one_per_worker(
    srv: ServerHandle, user: str, closing: list[Any], tries: int = 60
) -> dict[int, WsClient]:
    """Connections of `user`, exactly one on each worker (extra ones are closed again)."""
    by_worker: dict[int, WsClient] = {}
    for _ in range(tries):
        c = WsClient(srv.ws_url, user)
        await c.connect(srv.token(user))
        pid = worker_of(srv, c.local_port)
        assert pid is not None, "connection not found on any worker"
        if pid in by_worker:
            await c.close()
            continue
        closing.append(c)
        by_worker[pid] = c
        if len(by_worker) == WORKERS:
            return by_worker
    raise AssertionError(f"{tries} connections of {user} never covered all workers: {by_worker}")


async def wait_info(
    api: ApiClient,
    expected_counts: list[int],
    *,
    total: int | None = None,
    count: int | None = None,
    timeout: float = 10.0,
) -> list[Any]:
    """Poll API `info` until its nodes' num_clients are exactly `expected_counts` (as a
    multiset), or, when given, there are `count` nodes whose num_clients sum to `total`.
    Peers' counts come with their heartbeats (every 3 s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        nodes = (await api.result("info"))["nodes"]
        got = sorted(n["num_clients"] for n in nodes)
        if total is not None:
            if len(got) == count and sum(got) == total:
                return nodes
        elif got == sorted(expected_counts):
            return nodes
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"info num_clients {got}, expected {expected_counts or (count, total)}"
            )
        await asyncio.sleep(0.2)  # poll interval


# --------------------------------------------------------------------------------------------


async def test_fanout_over_every_worker(
    srv: ServerHandle, api: ApiClient, closing: list[Any]
) -> None:
    ch = f"rec:fan-{uid()}"
    raws: list[WsClient] = []
    for i in range(24):
        raws.append(await raw_client(srv, f"user-{i % 8}", closing, f"raw{i}"))
    # The kernel hands connections to whichever worker accepts first; add a few more until
    # every worker holds some, so that the fan-out provably crosses workers.
    pids = set(worker_pids(srv))
    while {worker_of(srv, c.local_port) for c in raws} != pids:
        assert len(raws) < 60, "connections never reached every worker"
        i = len(raws)
        raws.append(await raw_client(srv, f"user-{i % 8}", closing, f"raw{i}"))
    sdks = [SdkSubscriber(srv.ws_url, srv.token(f"sdk-{i}"), ch, f"sdk{i}") for i in range(6)]
    closing.extend(sdks)
    subscribe_results = [await c.subscribe(ch) for c in raws]
    for s in sdks:
        await s.start()
    total = len(raws) + len(sdks)
    assert total >= 30

    # Where each connection really is, from the worker processes' sockets.
    placement = collections.Counter(worker_of(srv, c.local_port) for c in raws)
    placement.update(worker_of(srv, sdk_local_port(s.client)) for s in sdks)
    assert set(placement) == pids, placement
    counts = list(placement.values())

    nodes = await wait_info(api, counts)
    assert len(nodes) == WORKERS
    assert len({n["uid"] for n in nodes}) == WORKERS
    assert sum(n["num_clients"] for n in nodes) == total
    # 8 raw users + 6 SDK users, some of them on several workers.
    assert sum(n["num_users"] for n in nodes) >= 14

    channels = (await api.result("channels", {"pattern": ch}))["channels"]
    assert channels == {ch: {"num_clients": total}}

    presence = (await api.result("presence", {"channel": ch}))["presence"]
    sdk_ids = {s.client.client_id for s in sdks}
    assert set(presence) == {c.client_id for c in raws} | sdk_ids
    assert {v["user"] for v in presence.values()} == {f"user-{i}" for i in range(8)} | {
        f"sdk-{i}" for i in range(6)
    }
    stats = await api.result("presence_stats", {"channel": ch})
    assert stats == {"num_clients": total, "num_users": 14}

    epoch = subscribe_results[0]["epoch"]
    assert {r["epoch"] for r in subscribe_results} == {epoch}
    assert all(s.subscribed[0].stream_position.epoch == epoch for s in sdks)

    # 200 publications over fresh connections (random workers), 8 at a time.
    gate = asyncio.Semaphore(8)
    offset_of: dict[int, int] = {}

    async def publish(seq: int) -> None:
        async with gate:
            res = await api.result("publish", {"channel": ch, "data": {"seq": seq}})
        assert res["epoch"] == epoch
        offset_of[seq] = res["offset"]

    await asyncio.gather(*(publish(i) for i in range(200)))
    assert sorted(offset_of.values()) == list(range(1, 201))
    # A last publication as a barrier: anything duplicated would arrive before it.
    await publish(200)
    assert offset_of[200] == 201
    expected = list(range(1, 202))
    seq_at = {off: seq for seq, off in offset_of.items()}

    await wait_all(raws, lambda c: len(c.pubs[ch]) >= 201, what="201 publications")
    await wait_all(sdks, lambda s: len(s.pubs) >= 201, what="201 publications")
    for c in raws:
        assert c.offsets(ch) == expected, c
        assert [p["data"]["seq"] for p in c.pubs[ch]] == [seq_at[o] for o in expected]
    for s in sdks:
        assert s.offsets() == expected, s
        assert [d["seq"] for _, d in s.pubs] == [seq_at[o] for o in expected]

    hist = await api.result("history", {"channel": ch, "limit": 0})
    assert (hist["offset"], hist["epoch"]) == (201, epoch)


async def test_user_actions_reach_every_worker(
    srv: ServerHandle, api: ApiClient, closing: list[Any]
) -> None:
    """API subscribe/unsubscribe/disconnect/refresh by user act on that user's connections on
    every worker, whichever worker the API call lands on; other users are untouched."""
    user, other = f"ua-{uid()}", f"bystander-{uid()}"
    conns = list((await one_per_worker(srv, user, closing)).values())
    bystanders = list((await one_per_worker(srv, other, closing)).values())
    ch = f"rec:ua-{uid()}"
    for c in conns + bystanders:
        await c.subscribe(ch)

    # unsubscribe by user
    await api.result("unsubscribe", {"user": user, "channel": ch})
    await wait_all(
        conns,
        lambda c: (
            {"channel": ch, "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}
            in c.pushes
        ),
        what="unsubscribe push",
    )
    presence = (await api.result("presence", {"channel": ch}))["presence"]
    assert set(presence) == {c.client_id for c in bystanders}
    channels = (await api.result("channels", {"pattern": ch}))["channels"]
    assert channels == {ch: {"num_clients": len(bystanders)}}

    # subscribe by user (server-side subscription), then a publication reaches it everywhere
    srv_ch = f"rec:srv-{uid()}"
    await api.result("subscribe", {"user": user, "channel": srv_ch})
    await wait_all(
        conns,
        lambda c: any(p.get("channel") == srv_ch and "subscribe" in p for p in c.pushes),
        what="subscribe push",
    )
    for c in conns:
        push = next(p for p in c.pushes if p.get("channel") == srv_ch and "subscribe" in p)
        assert push["subscribe"]["recoverable"] is True
        assert push["subscribe"]["positioned"] is True
    res = await api.result("publish", {"channel": srv_ch, "data": {"to": "server-side"}})
    assert res["offset"] == 1
    await wait_all(conns, lambda c: len(c.pubs[srv_ch]) >= 1, what="server-side publication")
    for c in conns:
        assert c.pubs[srv_ch] == [{"data": {"to": "server-side"}, "offset": 1}]
    assert all(not b.pubs[srv_ch] for b in bystanders)
    presence = (await api.result("presence", {"channel": srv_ch}))["presence"]
    assert set(presence) == {c.client_id for c in conns}
    assert {v["user"] for v in presence.values()} == {user}

    # disconnect by user
    await api.result("disconnect", {"user": user, "disconnect": {"code": 4501, "reason": "bye"}})
    await wait_all(conns, lambda c: c.closed is not None, what="disconnect")
    assert [c.closed for c in conns] == [(4501, "bye")] * WORKERS

    # refresh by user with expired=true closes its connections with 3005 everywhere
    victim = f"rf-{uid()}"
    vconns = list((await one_per_worker(srv, victim, closing)).values())
    await api.result("refresh", {"user": victim, "expired": True})
    await wait_all(vconns, lambda c: c.closed is not None, what="expired disconnect")
    assert {c.closed[0] for c in vconns if c.closed} == {3005}

    # The bystander saw none of it and still works on every worker.
    assert all(b.closed is None for b in bystanders)
    for b in bystanders:
        assert "unsubscribe" not in str(b.pushes)
        reply = await b.command({"presence_stats": {"channel": ch}})
        assert reply["presence_stats"] == {"num_clients": WORKERS, "num_users": 1}


# --------------------------------------------------------------------------------------------


async def test_worker_sigkill_under_load_clients_recover(
    fresh_server_factory, redis_server: RedisProcess
) -> None:
    """SIGKILL one worker while publishing continuously: its SDK clients reconnect to other
    workers (or the replacement) and recover; every client ends with offsets 1..N exactly."""
    srv = fresh_server_factory(redis_config(redis_server.port), workers=WORKERS)
    api = ApiClient(srv)
    ch = f"rec:kill-{uid()}"
    subs = [SdkSubscriber(srv.ws_url, srv.token(f"k{i}"), ch, f"k{i}") for i in range(12)]
    try:
        for s in subs:
            await s.start()
        where = {s.name: worker_of(srv, sdk_local_port(s.client)) for s in subs}
        assert None not in where.values(), where
        victim_pid, _ = collections.Counter(where.values()).most_common(1)[0]
        victims = [s for s in subs if where[s.name] == victim_pid]
        survivors = [s for s in subs if where[s.name] != victim_pid]

        published: dict[int, int] = {}  # offset -> seq, for publishes that answered
        failed = 0
        stop = asyncio.Event()
        progress = asyncio.Event()

        seqs = itertools.count()

        async def publisher() -> None:
            nonlocal failed
            while not stop.is_set():
                seq = next(seqs)
                try:
                    res = await api.result("publish", {"channel": ch, "data": {"seq": seq}})
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1  # landed on the dying worker: may or may not be committed
                    continue
                published[res["offset"]] = seq
                progress.set()

        async def published_at_least(n: int) -> None:
            while len(published) < n:
                progress.clear()
                await progress.wait()

        tasks = [asyncio.create_task(publisher()) for _ in range(3)]
        try:
            await asyncio.wait_for(published_at_least(30), 10)
            os.kill(victim_pid, signal.SIGKILL)
            await wait_all(
                victims,
                lambda s: len(s.subscribed) >= 2,
                what="resubscribed after the worker died",
                timeout=15,
            )
            mark = len(published)
            await asyncio.wait_for(published_at_least(mark + 60), 10)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        hist = await api.result("history", {"channel": ch, "limit": 0})
        top = hist["offset"]
        assert len(published) <= top <= len(published) + failed
        assert set(published) <= set(range(1, top + 1))
        expected = list(range(1, top + 1))
        await wait_all(subs, lambda s: len(s.pubs) >= top, what=f"{top} publications")
        for s in subs:
            assert s.offsets() == expected, s
            assert all(published.get(o, d["seq"]) == d["seq"] for o, d in s.pubs)
        for s in victims:
            assert "disconnected" not in s.client_log  # reconnecting, never gave up
            ctx = s.subscribed[-1]
            assert (ctx.was_recovering, ctx.recovered) == (True, True), s
            assert ctx.stream_position.epoch == hist["epoch"]
            assert new_worker_of(srv, s) != victim_pid
        for s in survivors:
            assert len(s.subscribed) == 1, s
            assert s.client_log == ["connecting", "connected"], s
        assert victim_pid not in worker_pids(srv)
        # The dead node drops out of `info` (no heartbeats), the replacement joins.
        nodes = await wait_info(api, [], total=len(subs), count=WORKERS, timeout=20)
        assert len({n["uid"] for n in nodes}) == WORKERS
    finally:
        for s in subs:
            await s.stop()
        await api.close()


def new_worker_of(srv: ServerHandle, s: SdkSubscriber) -> int | None:
    return worker_of(srv, sdk_local_port(s.client))
