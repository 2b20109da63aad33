"""The real server (2 workers) with the Redis engine on a Redis Cluster and behind Sentinel,
driven by the official SDKs: centrifuge-python subscribes with recovery, cent publishes
through the HTTP API.

Two workers are two nodes: a publication made through one worker's API reaches a client of
the other only through Redis, and a reconnecting client may land on either worker and must
recover its stream from Redis alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cent import AsyncClient, Disconnect, DisconnectRequest, HistoryRequest, PublishRequest
from centrifuge import (
    Client,
    ClientState,
    Subscription,
)

from tests.support.engine import channels_in_partitions
from tests.support.redis_topologies import SentinelTopology
from tests.support.sdk import ClientEvents, SubEvents

from .helpers import ServerHandle

CONFIG: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "history_size": 50,
                "history_ttl": "300s",
                "force_recovery": True,
                "allow_history_for_subscriber": True,
            }
        ]
    },
}
EVENT_TIMEOUT = 5.0


def redis_config(address: str) -> dict[str, Any]:
    # Own prefix: servers of other tests may share the same cluster.
    redis = {"address": address, "prefix": "e2e" + uuid.uuid4().hex[:8]}
    return {**CONFIG, "engine": {"type": "redis", "redis": redis}}


def uid() -> str:
    return uuid.uuid4().hex[:8]


class Session:
    """SDK clients and a cent API client for one server; all closed at the end of the test."""

    def __init__(self, srv: ServerHandle) -> None:
        self.srv = srv
        self.api = AsyncClient(srv.api_url, srv.api_key)
        self.clients: list[Client] = []

    async def connect(self, user: str) -> tuple[Client, ClientEvents, Any]:
        events = ClientEvents()
        client = Client(
            self.srv.ws_url,
            events=events,
            token=self.srv.token(user),
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.5,
            proxy=None,  # never route 127.0.0.1 through a proxy from the environment
        )
        self.clients.append(client)
        await client.connect()
        ctx = await events.next("connected")
        return client, events, ctx

    async def subscribe(self, client: Client, channel: str) -> tuple[Subscription, SubEvents, Any]:
        events = SubEvents()
        sub = client.new_subscription(channel, events=events)
        await sub.subscribe()
        ctx = await events.next("subscribed")
        assert (ctx.recoverable, ctx.positioned, ctx.was_recovering) == (True, True, False)
        return sub, events, ctx

    async def publish(self, channel: str, data: Any) -> Any:
        return await self.api.publish(PublishRequest(channel=channel, data=data))

    async def close(self) -> None:
        for client in self.clients:
            await client.disconnect()
        await self.api.close()


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def srv(request: pytest.FixtureRequest, server_factory: Any) -> ServerHandle:
    topo = request.getfixturevalue(f"redis_{request.param}")
    return server_factory(redis_config(topo.address), workers=2)


@pytest.fixture
async def session(srv: ServerHandle) -> AsyncIterator[Session]:
    s = Session(srv)
    yield s
    await s.close()


# --------------------------------------------------------------------------------------------


async def test_publications_with_exact_offsets_and_history(session: Session) -> None:
    # On the cluster these channels live in 6 different partitions (so on every master).
    channels = channels_in_partitions("chat:e2e-" + uid(), 6)
    client, _, _ = await session.connect("reader")
    subs = {ch: await session.subscribe(client, ch) for ch in channels}
    for _, _, ctx in subs.values():
        assert ctx.stream_position.offset == 0

    for n in (1, 2, 3):
        for ch in channels:
            res = await session.publish(ch, {"ch": ch, "n": n})
            assert res.offset == n
            assert res.epoch == subs[ch][2].stream_position.epoch
    for ch, (sub, events, ctx) in subs.items():
        pubs = [(await events.next("publication")).pub for _ in range(3)]
        assert [(p.offset, p.data) for p in pubs] == [(n, {"ch": ch, "n": n}) for n in (1, 2, 3)]
        assert events.pending("publication") == []
        hist = await sub.history(limit=10)
        assert [(p.offset, p.data) for p in hist.publications] == [
            (n, {"ch": ch, "n": n}) for n in (1, 2, 3)
        ]
        assert (hist.offset, hist.epoch) == (3, ctx.stream_position.epoch)

    api_hist = await session.api.history(HistoryRequest(channel=channels[0], limit=2, reverse=True))
    assert [p.offset for p in api_hist.publications] == [3, 2]


async def test_recovery_after_reconnect_returns_exactly_the_missed(session: Session) -> None:
    channels = channels_in_partitions("chat:recover-" + uid(), 3)
    user = "recover-" + uid()
    client, cev, cctx = await session.connect(user)
    subs = {ch: await session.subscribe(client, ch) for ch in channels}
    for ch in channels:
        for n in (1, 2):
            assert (await session.publish(ch, {"n": n})).offset == n
    for _, events, _ in subs.values():
        assert [(await events.next("publication")).pub.offset for _ in (1, 2)] == [1, 2]

    async def publish_while_disconnected(ctx: Any) -> None:
        # The SDK reconnects only after this handler returns.
        if ctx.code == 4000:
            for ch in channels:
                for n in (3, 4, 5):
                    assert (await session.publish(ch, {"n": n, "missed": True})).offset == n

    cev.hooks["connecting"] = publish_while_disconnected
    await session.api.disconnect(
        DisconnectRequest(
            user=user, client=cctx.client, disconnect=Disconnect(code=4000, reason="again")
        )
    )
    assert (await cev.next("connected")).client != cctx.client

    for _, events, first in subs.values():
        ctx = await events.next("subscribed")
        assert (ctx.was_recovering, ctx.recovered) == (True, True)
        assert ctx.stream_position.epoch == first.stream_position.epoch
        pubs = [(await events.next("publication")).pub for _ in range(3)]
        assert [(p.offset, p.data) for p in pubs] == [
            (n, {"n": n, "missed": True}) for n in (3, 4, 5)
        ]
    # Nothing duplicated: the next live publication is the next offset.
    for ch in channels:
        assert (await session.publish(ch, {"n": 6})).offset == 6
    for _, events, _ in subs.values():
        pub = (await events.next("publication")).pub
        assert (pub.offset, pub.data) == (6, {"n": 6})
        assert events.pending("publication") == []
    assert client.state == ClientState.CONNECTED


async def _await_health(srv: ServerHandle, timeout: float = 15.0) -> None:
    """Poll /health until 200 (the server has no push for 'engine available again')."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{srv.url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"/health not 200 within {timeout}s\n{srv.log_tail()}")
            await asyncio.sleep(0.05)


async def test_sentinel_failover_keeps_stream_and_delivery(
    fresh_server_factory: Any, fresh_redis_sentinel: SentinelTopology
) -> None:
    topo = fresh_redis_sentinel
    srv = fresh_server_factory(redis_config(topo.address), workers=1)
    session = Session(srv)
    try:
        ch = "chat:failover-" + uid()
        client, _, _ = await session.connect("fo")
        _, events, first = await session.subscribe(client, ch)
        for n in (1, 2):
            assert (await session.publish(ch, {"n": n})).offset == n
            assert (await events.next("publication")).pub.offset == n
        epoch = first.stream_position.epoch

        new_master = await asyncio.to_thread(topo.kill_master_and_await_failover)
        assert new_master is topo.replica
        await _await_health(srv)

        res = await session.publish(ch, {"n": 3})
        assert (res.offset, res.epoch) == (3, epoch)  # the replicated stream goes on
        pub = (await events.next("publication", timeout=10)).pub
        assert (pub.offset, pub.data) == (3, {"n": 3})
        # If the server re-subscribed the client meanwhile, it recovered (nothing lost).
        for ctx in events.pending("subscribed"):
            assert (ctx.was_recovering, ctx.recovered) == (True, True)
        assert client.state == ClientState.CONNECTED
    finally:
        await session.close()
