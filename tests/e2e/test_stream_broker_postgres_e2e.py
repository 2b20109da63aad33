"""Two server processes ("nodes", two gunicorn workers each, so four Centrifugo nodes) on one
PostgreSQL with `broker.type: postgres` (history and fan-out in Centrifugo's tables) and the
memory presence manager (per node, as Centrifugo allows beside this broker).

- Publications made through either server's API reach a centrifuge-python subscriber on the
  other, once each and in offset order: every worker reads the stream table itself.
- A subscriber that disconnects, misses publications and connects again recovers them from
  the PostgreSQL history (recovered flag, dense offsets, the same epoch).
- A PostgreSQL restart mid-stream heals: while it is away /health answers 500 and a publish
  fails with error 100; once it is back every worker is healthy and the subscribers get
  what is published after it, offsets continuing without a gap. No server process restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.support import postgres

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, SdkSubscriber, api_pair, two_servers

WORKERS = 2
NS = "pg"


def uid() -> str:
    return uuid.uuid4().hex[:8]


def has_pubs(s: SdkSubscriber, n: int) -> Callable[[], bool]:
    def enough() -> bool:
        return len(s.pubs) >= n

    return enough


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


def pg_config(dsn: str) -> dict[str, Any]:
    return {
        "broker": {
            "enabled": True,
            "type": "postgres",
            "postgres": {"dsn": dsn, "use_notify": True, "num_shards": 4},
        },
        "channel": {
            "namespaces": [
                {
                    "name": NS,
                    "allow_subscribe_for_client": True,
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": True,
                }
            ]
        },
    }


@pytest.fixture(scope="module")
def nodes(pg: postgres.PostgresServer) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    cfg = pg_config(pg.dsn)
    with two_servers(cfg, WORKERS) as pair:
        yield pair


@pytest.fixture
async def apis(nodes: tuple[ServerHandle, ServerHandle]) -> AsyncIterator[tuple[ApiClient, ...]]:
    async with api_pair(nodes) as pair:
        yield pair


async def test_publications_through_one_server_reach_subscribers_of_the_other(
    nodes: tuple[ServerHandle, ServerHandle], apis: tuple[ApiClient, ApiClient]
) -> None:
    a, b = nodes
    api_a, api_b = apis
    channel = f"{NS}:fan-{uid()}"
    subs = [
        SdkSubscriber(a.ws_url, a.token("u-a"), channel, name="sub@a"),
        SdkSubscriber(b.ws_url, b.token("u-b"), channel, name="sub@b"),
    ]
    for s in subs:
        await s.start()
    try:
        n = 20
        for i in range(n):
            # Mostly through B's API: the subscriber on A gets them through PostgreSQL.
            api = api_a if i % 4 == 0 else api_b
            await api.result("publish", {"channel": channel, "data": {"i": i}})
        for s in subs:
            await s.wait_for(has_pubs(s, n), what="publications")
            assert s.pubs == [(i + 1, {"i": i}) for i in range(n)], s.describe()
        hist = await api_a.result("history", {"channel": channel, "limit": -1})
        assert [p["data"] for p in hist["publications"]] == [{"i": i} for i in range(n)]
        assert hist["offset"] == n
    finally:
        for s in subs:
            await s.stop()


async def test_reconnecting_subscriber_recovers_the_missed_from_history(
    nodes: tuple[ServerHandle, ServerHandle], apis: tuple[ApiClient, ApiClient]
) -> None:
    a, _ = nodes
    _, api_b = apis
    channel = f"{NS}:recover-{uid()}"
    s = SdkSubscriber(a.ws_url, a.token("u-r"), channel, name="sub@a")
    await s.start()
    try:
        for i in range(3):
            await api_b.result("publish", {"channel": channel, "data": {"i": i}})
        await s.wait_for(lambda: len(s.pubs) >= 3, what="publications before")
        # The first subscribe found no stream yet (epoch "", as Centrifugo answers): the
        # epoch is the one the first publication made.
        epoch = (await api_b.result("history", {"channel": channel, "limit": 0}))["epoch"]
        assert epoch and s.subscribed[0].stream_position.epoch == ""
        await s.client.disconnect()
        for i in range(3, 10):
            await api_b.result("publish", {"channel": channel, "data": {"i": i}})
        await s.client.connect()
        await s.wait_for(lambda: len(s.subscribed) >= 2, what="resubscribed")
        await s.wait_for(lambda: len(s.pubs) >= 10, what="recovered publications")
        ctx = s.subscribed[-1]
        assert (ctx.was_recovering, ctx.recovered) == (True, True), s.describe()
        assert ctx.stream_position.epoch == epoch
        assert s.pubs == [(i + 1, {"i": i}) for i in range(10)], s.describe()
    finally:
        await s.stop()


async def test_postgres_restart_mid_stream_heals(
    nodes: tuple[ServerHandle, ServerHandle],
    apis: tuple[ApiClient, ApiClient],
    pg: postgres.PostgresServer,
) -> None:
    a, b = nodes
    api_a, api_b = apis
    channel = f"{NS}:restart-{uid()}"
    subs = [
        SdkSubscriber(a.ws_url, a.token("u-a"), channel, name="sub@a"),
        SdkSubscriber(b.ws_url, b.token("u-b"), channel, name="sub@b"),
    ]
    pids = (a.proc.pid, b.proc.pid)
    for s in subs:
        await s.start()
    try:
        await api_a.result("publish", {"channel": channel, "data": {"before": 1}})
        for s in subs:
            await s.wait_for(has_pubs(s, 1), what="publication before the restart")

        pg.stop()
        # Answers in a row from random workers: both workers of each server see it.
        await api_a.wait_health(500, streak=4)
        await api_b.wait_health(500, streak=4)
        failed = await api_b.call("publish", {"channel": channel, "data": {"lost": 1}})
        assert failed["error"]["code"] == 100, failed

        pg.start()
        await api_a.wait_health(200, streak=6, timeout=30)
        await api_b.wait_health(200, streak=6, timeout=30)
        for i in range(6):
            api = api_a if i % 2 == 0 else api_b
            await api.result("publish", {"channel": channel, "data": {"after": i}})
        want = [(1, {"before": 1})] + [(i + 2, {"after": i}) for i in range(6)]
        for s in subs:
            await s.wait_for(has_pubs(s, 7), what="publications after the restart")
            # The failed publish stored nothing: offsets go on without a gap.
            assert s.pubs == want, s.describe()
    finally:
        for s in subs:
            await s.stop()
    assert (a.proc.pid, b.proc.pid) == pids and a.proc.poll() is None and b.proc.poll() is None
