"""Shared poll across workers on the Redis engine: two real Nodes (two workers) on one
redis-server, a real HTTP refresh backend, subscribers joined through the manager's
track/join contract (the connection's side, app/client/polling.py, is the e2e tests').

What it proves (app/sharedpoll/redis_link.py): one worker polls each channel for the
union of both workers' keys, once per refresh interval in total; the other worker's
subscribers get the same publications with the same versions (versionless ones too);
a follower's new key is polled at once; shared_poll_publish on one worker reaches the
other's subscribers; the lease moves when the polling worker closes, and when it stops
renewing without a word (a killed worker), within the lease ttl + an interval.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.config import load_config
from app.engines.build import build_engines
from app.node import Node
from app.sharedpoll.channel import PollChannel
from app.sharedpoll.frames import PollPub
from app.sharedpoll.redis_link import RedisChannelLink, timings
from tests.support.poll_backend import Backend
from tests.support.redis_server import RedisProcess
from tests.support.redis_topologies import ClusterTopology

INTERVAL = 0.2
SLOW_INTERVAL = 5.0


class Subscriber:
    """A PollSubscriber recording what it is handed; tests await a (key, version)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.pubs: list[tuple[str, int, bytes]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def poll_publication(self, pub: PollPub) -> None:
        self.pubs.append((pub.key, pub.version, pub.data))
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)

    def poll_removal(self, pub: PollPub) -> None:
        pass

    def poll_state_lost(self, channel: str) -> None:
        pass

    def versions(self, key: str) -> list[int]:
        """The versions handed for `key`, each once: a re-send of the version a subscriber
        holds (for another one joining with nothing) is filtered by its connection."""
        return list(dict.fromkeys(v for k, v, _ in self.pubs if k == key))

    def data(self, key: str) -> list[bytes]:
        return [d for k, _, d in self.pubs if k == key]

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))


def _namespace(name: str, interval: float, **shared_poll: Any) -> dict[str, Any]:
    return {
        "name": name,
        "subscription_type": "shared_poll",
        "shared_poll": {
            "refresh_interval": f"{int(interval * 1000)}ms",
            "channel_shutdown_delay": "1ms",
            **shared_poll,
        },
    }


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(
    tmp_path: Path, redis_proc: RedisProcess, rdb: Redis, backend: Backend
) -> AsyncIterator[NodeFactory]:
    """`await make_node(address="")`: a started Node (one worker) on the shared Redis (or
    on `address`); shut down after."""
    config: dict[str, Any] = {
        "engine": {"type": "redis", "redis": {"address": f"redis://127.0.0.1:{redis_proc.port}"}},
        "shared_poll": {"hmac_secret_key": "secret"},
        "channel": {
            "proxy": {
                "shared_poll_refresh": {
                    "endpoint": f"http://127.0.0.1:{backend.port}/refresh",
                    "timeout": "2s",
                }
            },
            "namespaces": [
                _namespace("poll", INTERVAL, mode="versioned", publish_enabled=True),
                _namespace("free", INTERVAL, mode="versionless"),
                _namespace("slow", SLOW_INTERVAL, mode="versioned"),
            ],
        },
    }
    nodes: list[Node] = []

    async def make(address: str = "") -> Node:
        if address:
            config["engine"]["redis"] = {"address": address, "prefix": "sp-cluster"}
        path = tmp_path / f"config{len(nodes)}.json"
        path.write_text(json.dumps(config))
        cfg = load_config(str(path), env={})
        engines = build_engines(cfg)
        node = Node(cfg, engines.broker, engines.presence, engines.controller, engines.map_broker)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.shutdown()


def join(node: Node, channel: str, sub: Subscriber, keys: list[str]) -> PollChannel:
    """What a connection's track does once its signatures are checked."""
    ns = node.resolve(channel).options
    tracked = node.shared_poll.track(channel, ns, keys)
    node.shared_poll.join(channel, sub, keys, tracked, [0] * len(keys))
    return node.shared_poll.channels[channel]


def link_of(state: PollChannel) -> RedisChannelLink:
    assert isinstance(state.link, RedisChannelLink)
    return state.link


async def leader_and_follower(a: PollChannel, b: PollChannel) -> tuple[PollChannel, PollChannel]:
    await asyncio.gather(link_of(a).ready.wait(), link_of(b).ready.wait())
    assert link_of(a).leader != link_of(b).leader, "exactly one worker holds the lease"
    return (a, b) if link_of(a).leader else (b, a)


async def test_one_worker_polls_the_union_once_per_interval_and_both_deliver(
    make_node: NodeFactory, backend: Backend
) -> None:
    ch = "poll:union"
    for key in "abc":
        backend.set(ch, key, {"v": key}, version=1)
    a, b = await make_node(), await make_node()
    sa, sb = Subscriber("sa"), Subscriber("sb")
    state_a = join(a, ch, sa, ["a", "b"])
    state_b = join(b, ch, sb, ["b", "c"])
    await sa.wait(lambda: sa.versions("a") == [1] and sa.versions("b") == [1])
    await sb.wait(lambda: sb.versions("b") == [1] and sb.versions("c") == [1])
    await leader_and_follower(state_a, state_b)

    # The timer cycles from now on: one call per interval, each for the union of keys.
    seen = len(backend.of(ch))
    await backend.wait(lambda: len(backend.of(ch)) >= seen + 6, timeout=10 * INTERVAL)
    calls = backend.of(ch)[seen + 1 : seen + 6]
    times = [
        t
        for t, (_, body) in zip(backend.arrived, backend.requests, strict=True)
        if body["channel"] == ch
    ][seen + 1 : seen + 6]
    for body in calls:
        assert sorted(i["key"] for i in body["items"]) == ["a", "b", "c"]
    gaps = [t2 - t1 for t1, t2 in zip(times, times[1:], strict=False)]
    assert all(gap > INTERVAL * 0.6 for gap in gaps), gaps  # no second poller in between

    backend.set(ch, "b", {"v": "b2"}, version=2)
    await sa.wait(lambda: sa.versions("b") == [1, 2])
    await sb.wait(lambda: sb.versions("b") == [1, 2])
    assert sa.data("b")[-1] == sb.data("b")[-1]
    assert json.loads(sb.data("b")[-1]) == {"v": "b2"}


async def test_on_a_cluster_one_worker_polls_and_both_deliver(
    make_node: NodeFactory, backend: Backend, redis_cluster: ClusterTopology
) -> None:
    ch = "free:cluster"  # versionless: heartbeat, versions and fan-out all in one slot
    backend.set(ch, "k", {"n": 1})
    a = await make_node(redis_cluster.address)
    b = await make_node(redis_cluster.address)
    sa, sb = Subscriber("sa"), Subscriber("sb")
    state_a, state_b = join(a, ch, sa, ["k"]), join(b, ch, sb, ["k"])
    await sa.wait(lambda: len(sa.versions("k")) == 1)
    await sb.wait(lambda: len(sb.versions("k")) == 1)
    await leader_and_follower(state_a, state_b)
    backend.set(ch, "k", {"n": 2})
    first = sa.versions("k")[0]
    await sa.wait(lambda: sa.versions("k")[-1] > first)
    await sb.wait(lambda: sb.versions("k")[-1] > first)
    assert sa.versions("k") == sb.versions("k")


async def test_versionless_versions_are_made_once_for_every_worker(
    make_node: NodeFactory, backend: Backend
) -> None:
    ch = "free:shared"
    backend.set(ch, "k", {"n": 1})
    a, b = await make_node(), await make_node()
    sa, sb = Subscriber("sa"), Subscriber("sb")
    state_a = join(a, ch, sa, ["k"])
    await sa.wait(lambda: len(sa.versions("k")) == 1)
    state_b = join(b, ch, sb, ["k"])
    await sb.wait(lambda: len(sb.versions("k")) == 1)
    await leader_and_follower(state_a, state_b)
    assert state_a.epoch == state_b.epoch  # the shared epoch from Redis
    assert sa.versions("k") == sb.versions("k")

    backend.set(ch, "k", {"n": 2})
    first = sa.versions("k")[0]
    await sa.wait(lambda: sa.versions("k")[-1] > first)
    await sb.wait(lambda: sb.versions("k")[-1] > first)
    assert sa.versions("k")[-1] == sb.versions("k")[-1]
    assert sa.data("k")[-1] == sb.data("k")[-1]
    assert json.loads(sb.data("k")[-1]) == {"n": 2}


async def test_a_followers_new_key_is_polled_at_once(
    make_node: NodeFactory, backend: Backend
) -> None:
    ch = "slow:follow"
    backend.set(ch, "a", "A", version=1)
    backend.set(ch, "n", "N", version=3)
    a = await make_node()
    sa = Subscriber("sa")
    state_a = join(a, ch, sa, ["a"])
    await sa.wait(lambda: sa.versions("a") == [1])
    assert link_of(state_a).leader
    b = await make_node()
    sb = Subscriber("sb")
    started = time.monotonic()
    state_b = join(b, ch, sb, ["n"])
    await sb.wait(lambda: sb.versions("n") == [3], timeout=SLOW_INTERVAL / 2)
    assert time.monotonic() - started < SLOW_INTERVAL / 2
    assert not link_of(state_b).leader
    # The leader polled it (the follower never calls the backend): a call for just "n".
    assert [sorted(i["key"] for i in body["items"]) for body in backend.of(ch)] == [["a"], ["n"]]


async def test_shared_poll_publish_on_one_worker_reaches_the_other(
    make_node: NodeFactory, backend: Backend
) -> None:
    ch = "poll:published"
    backend.set(ch, "p", "old", version=1)
    a, b = await make_node(), await make_node()
    sa, sb = Subscriber("sa"), Subscriber("sb")
    join(a, ch, sa, ["p"])
    join(b, ch, sb, ["p"])
    await sa.wait(lambda: sa.versions("p") == [1])
    await sb.wait(lambda: sb.versions("p") == [1])
    await a.shared_poll.publish(ch, "p", 7, "", b'"new"')
    await sa.wait(lambda: sa.versions("p") == [1, 7])
    await sb.wait(lambda: sb.versions("p") == [1, 7])


async def _takeover(
    make_node: NodeFactory,
    backend: Backend,
    ch: str,
    stop: Callable[[Node, PollChannel], Awaitable[None]],
) -> float:
    """Two workers track `ch`; `stop` ends the leader; returns how long until the
    follower's subscriber got a change made right after."""
    backend.set(ch, "k", "v1", version=1)
    a, b = await make_node(), await make_node()
    sa, sb = Subscriber("sa"), Subscriber("sb")
    state_a, state_b = join(a, ch, sa, ["k"]), join(b, ch, sb, ["k"])
    await sa.wait(lambda: sa.versions("k") == [1])
    await sb.wait(lambda: sb.versions("k") == [1])
    leader, follower = await leader_and_follower(state_a, state_b)
    leader_node, follower_sub = (a, sb) if leader is state_a else (b, sa)
    await stop(leader_node, leader)
    started = time.monotonic()
    backend.set(ch, "k", "v2", version=2)
    await follower_sub.wait(lambda: follower_sub.versions("k") == [1, 2], timeout=10)
    assert link_of(follower).leader
    return time.monotonic() - started


async def test_the_lease_moves_when_the_polling_worker_closes(
    make_node: NodeFactory, backend: Backend
) -> None:
    async def close(node: Node, state: PollChannel) -> None:
        await node.shutdown()  # releases the lease

    took = await _takeover(make_node, backend, "poll:closed", close)
    tick, _ = timings(INTERVAL)
    assert took < tick + 2 * INTERVAL + 0.5


async def test_the_lease_expires_when_the_polling_worker_stops_renewing(
    make_node: NodeFactory, backend: Backend
) -> None:
    async def freeze(node: Node, state: PollChannel) -> None:
        # A killed worker: its heartbeat and poll loop stop, the lease is not released.
        # (Cancelled until done: Python 3.11's wait_for can swallow one cancellation.)
        assert state._task is not None
        for task in (link_of(state)._task, state._task):
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.05)

    took = await _takeover(make_node, backend, "poll:killed", freeze)
    tick, lease = timings(INTERVAL)
    assert took < lease + tick + 2 * INTERVAL + 0.5
