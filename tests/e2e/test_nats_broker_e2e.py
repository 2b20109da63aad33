"""Two server processes ("nodes", two gunicorn workers each, so four Centrifugo nodes) on one
nats-server with `broker.type: nats` and the Redis presence manager.

- Each node's publications reach a centrifuge-python subscriber on one server and a
  centrifuge-js subscriber on the other; presence, kept in Redis, sees both clients.
- A NATS restart mid-stream heals by itself: while NATS is away /health answers 500 and a
  publish fails with error 100 (as in a Redis outage); once it is back every worker is healthy
  again and the same subscribers, never disconnected, receive what is published after it. No
  server process is restarted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support import nats_server

from .helpers import ServerHandle, node_available, run_js_async
from .redis_e2e_helpers import ApiClient, SdkSubscriber, api_pair, two_servers

WORKERS = 2
NS = "nats"


def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def nats_proc() -> Iterator[nats_server.NatsServer]:
    nats_server.require()
    server = nats_server.start()
    yield server
    server.remove()


def nats_config(nats_url: str, subject_prefix: str, redis_url: str) -> dict[str, Any]:
    return {
        "broker": {
            "enabled": True,
            "type": "nats",
            "nats": {"url": nats_url, "prefix": subject_prefix},
        },
        "presence_manager": {
            "enabled": True,
            "type": "redis",
            "redis": {"address": redis_url, "prefix": subject_prefix},
        },
        "channel": {
            "namespaces": [
                {
                    "name": NS,
                    "presence": True,
                    "allow_subscribe_for_client": True,
                    "allow_presence_for_subscriber": True,
                },
                # History configured on a broker that has none (Centrifugo: ErrorNotAvailable).
                {
                    "name": "hist",
                    "history_size": 10,
                    "history_ttl": "60s",
                    "force_recovery": True,
                    "allow_subscribe_for_client": True,
                },
            ]
        },
    }


@pytest.fixture(scope="module")
def nodes(nats_proc, e2e_redis_url: str) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    # One subject prefix for both servers (they share channels), none shared with other tests.
    cfg = nats_config(nats_proc.url, f"t{uid()}", e2e_redis_url)
    with two_servers(cfg, WORKERS) as pair:
        yield pair


@pytest.fixture
async def apis(nodes) -> AsyncIterator[tuple[ApiClient, ApiClient]]:
    async with api_pair(nodes) as pair:
        yield pair


async def presence_count(api: ApiClient, channel: str) -> int:
    return len((await api.result("presence", {"channel": channel})).get("presence", {}))


async def wait_presence(api: ApiClient, channel: str, n: int, timeout: float = 15.0) -> None:
    """Presence has no event a test can await: poll the API until `n` clients are present."""
    async with asyncio.timeout(timeout):
        while await presence_count(api, channel) < n:  # noqa: ASYNC110 - state in Redis
            await asyncio.sleep(0.05)


JS_SUBSCRIBER = """
const c = newClient({ token: token('js-user') });
const sub = c.newSubscription(env.CH);
const pubs = collect(sub, 'publication');
sub.subscribe();
c.connect();
await waitEvent(sub, 'subscribed');
await waitUntil(sub, 'publication', () => pubs.length >= Number(env.N), 20000, 'publications');
return { data: pubs.map((p) => p.data), channels: pubs.map((p) => p.channel) };
"""


async def test_nodes_deliver_each_others_publications_to_python_and_js(nodes, apis):
    reason = node_available()
    if reason:
        pytest.skip(reason)
    a, b = nodes
    api_a, api_b = apis
    channel = f"{NS}:both-{uid()}"
    n = 10
    py_sub = SdkSubscriber(a.ws_url, a.token("py-user"), channel, name="py@a")
    await py_sub.start()
    js = asyncio.create_task(run_js_async(JS_SUBSCRIBER, b.js_env(CH=channel, N=str(n)), 40))
    try:
        # Presence lives in Redis: both servers see both clients once both are subscribed.
        await wait_presence(api_b, channel, 2)
        for i in range(n):
            api = api_a if i % 2 == 0 else api_b
            await api.result("publish", {"channel": channel, "data": {"i": i}})
        await py_sub.wait_for(lambda: len(py_sub.pubs) >= n, what="python publications")
        out = await js
    finally:
        await py_sub.stop()
        if not js.done():
            js.cancel()
    want = [{"i": i} for i in range(n)]
    # No history: no offsets; order across the two servers' NATS connections is not promised.
    assert sorted((d for _, d in py_sub.pubs), key=lambda d: d["i"]) == want
    assert {o for o, _ in py_sub.pubs} == {0}
    assert sorted(out["data"], key=lambda d: d["i"]) == want
    assert len(py_sub.pubs) == n and len(out["data"]) == n


async def test_nats_restart_mid_stream_heals(nodes, apis, nats_proc):
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
        await wait_presence(api_a, channel, 2)
        await api_a.result("publish", {"channel": channel, "data": {"before": 1}})
        for s in subs:
            await s.wait_for(lambda s=s: len(s.pubs) >= 1, what="publication before the restart")

        nats_proc.stop()
        # Four answers in a row from random workers: both workers of each server see it.
        await api_a.wait_health(500, streak=4)
        await api_b.wait_health(500, streak=4)
        failed = await api_b.call("publish", {"channel": channel, "data": {"lost": 1}})
        assert failed["error"]["code"] == 100, failed

        nats_proc.restart()
        await api_a.wait_health(200, streak=6, timeout=30)
        await api_b.wait_health(200, streak=6, timeout=30)
        for i in range(6):
            api = api_a if i % 2 == 0 else api_b
            await api.result("publish", {"channel": channel, "data": {"after": i}})
        for s in subs:
            await s.wait_for(lambda s=s: len(s.pubs) >= 7, what="publications after the restart")
            assert sorted(d.get("after", -1) for _, d in s.pubs) == [-1, 0, 1, 2, 3, 4, 5]
            assert s.disconnect_codes == [], s.describe()  # the same connection throughout
    finally:
        for s in subs:
            await s.stop()
    assert (a.proc.pid, b.proc.pid) == pids and a.proc.poll() is None and b.proc.poll() is None


async def test_history_is_not_available_as_on_centrifugos_nats_broker(nodes, apis):
    a, _ = nodes
    api_a, _ = apis
    reply = await api_a.call("history", {"channel": f"hist:h-{uid()}", "limit": 10})
    assert reply["error"]["code"] == 108, reply
    # A recoverable subscription needs the stream's position: refused with 108 too.
    sub = SdkSubscriber(a.ws_url, a.token("h-user"), f"hist:s-{uid()}", name="hist@a")
    await sub.client.connect()
    await sub.sub.subscribe()
    try:
        await sub.wait_for(lambda: bool(sub.unsubscribed), what="refusal")
        # The SDK unsubscribes with the code of a non-temporary subscribe error.
        assert [ctx.code for ctx in sub.unsubscribed] == [108], sub.describe()
        assert sub.subscribed == []
    finally:
        await sub.stop()
