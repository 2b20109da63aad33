"""The `redis_stream` consumer end to end: a real redis-server holding the streams (its own,
append-only file on, so a restart keeps streams and groups), `python -m app --workers 2` on
the Redis engine (another redis-server), centrifuge-python subscribers.

Both workers are members of one consumer group, so Redis splits the stream's entries between
them and their relative order is not kept (as in Centrifugo): the test checks every entry is
published exactly once, that a SIGKILLed worker's unacknowledged entries are reclaimed by
the other after `visibility_timeout`, and that a restart of the stream's Redis heals.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.support.redis_server import RedisProc, start_redis

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, RedisProcess, SdkSubscriber, redis_config, worker_pids

WORKERS = 2
STREAM = "centrifugo_commands"
PD_STREAM = "centrifugo_publications"
GROUP = "centrifugo"


@pytest.fixture(scope="module")
def stream_redis() -> Iterator[RedisProc]:
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-stream-"))
    server = start_redis(workdir, "streams", ["--appendonly", "yes", "--appendfsync", "always"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def srv(server_factory: Any, redis_server: RedisProcess, stream_redis: RedisProc) -> ServerHandle:
    address = f"redis://127.0.0.1:{stream_redis.port}"
    consumers = [
        {
            "name": "commands",
            "enabled": True,
            "type": "redis_stream",
            "redis_stream": {
                "address": [address],
                "streams": [STREAM],
                "consumer_group": GROUP,
                "visibility_timeout": "2s",
            },
        },
        {
            "name": "publications",
            "enabled": True,
            "type": "redis_stream",
            "redis_stream": {
                "address": [address],
                "streams": [PD_STREAM],
                "consumer_group": GROUP,
                "publication_data_mode": {"enabled": True},
            },
        },
    ]
    config = redis_config(redis_server.port, consumers=consumers, prometheus={"enabled": True})
    return server_factory(config, workers=WORKERS)


@pytest.fixture
async def api_client(srv: ServerHandle) -> AsyncIterator[ApiClient]:
    client = ApiClient(srv)
    await client.wait_nodes(WORKERS)
    yield client
    await client.close()


@pytest.fixture
async def streams(stream_redis: RedisProc) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=stream_redis.port)
    yield client
    await client.aclose()


async def add_commands(client: aioredis.Redis, channel: str, numbers: range) -> None:
    for n in numbers:
        payload = {"channel": channel, "data": {"n": n}, "idempotency_key": f"{channel}-{n}"}
        await client.xadd(STREAM, {"method": "publish", "payload": json.dumps(payload)})


def numbers(sub: SdkSubscriber) -> list[int]:
    return [data["n"] for _, data in sub.pubs]


@pytest.mark.timeout(180)
async def test_entries_reach_a_subscriber_once_across_worker_kill_and_redis_restart(
    srv: ServerHandle,
    api_client: ApiClient,
    stream_redis: RedisProc,
    streams: aioredis.Redis,
) -> None:
    channel = f"rec:rs-{uuid.uuid4().hex[:8]}"
    sub = SdkSubscriber(srv.ws_url, srv.token("u-rs"), channel)
    await sub.start()
    try:
        # 1. A worker SIGKILLed mid-stream: what it read and did not acknowledge is claimed
        # by the other worker after visibility_timeout (2 s); one it had published comes
        # again and its idempotency key keeps the publication single.
        await add_commands(streams, channel, range(0, 300))
        await sub.wait_for(lambda: len(sub.pubs) >= 30, what="30 publications")
        os.kill(worker_pids(srv)[0], signal.SIGKILL)
        await add_commands(streams, channel, range(300, 400))
        await sub.wait_for(lambda: len(sub.pubs) >= 400, what="400", timeout=60)
        await api_client.wait_nodes(WORKERS)  # gunicorn's replacement worker is up

        # 2. The streams' Redis restarted (the append-only file keeps stream and group).
        await add_commands(streams, channel, range(400, 500))
        stream_redis.stop()
        assert stream_redis.launch()
        await add_commands(streams, channel, range(500, 600))
        await sub.wait_for(lambda: len(sub.pubs) >= 600, what="600", timeout=60)

        assert sorted(numbers(sub)) == list(range(600))  # each once
        history = await api_client.result("history", {"channel": channel, "limit": -1})
        assert sorted(p["data"]["n"] for p in history["publications"]) == list(range(600))
        pending = await streams.xpending(STREAM, GROUP)
        assert pending["pending"] == 0  # every entry acknowledged
    finally:
        await sub.stop()


async def test_publication_data_mode(
    srv: ServerHandle, api_client: ApiClient, streams: aioredis.Redis
) -> None:
    a, b = (f"rec:rspd-{uuid.uuid4().hex[:8]}" for _ in range(2))
    sub_a = SdkSubscriber(srv.ws_url, srv.token("u-a"), a)
    sub_b = SdkSubscriber(srv.ws_url, srv.token("u-b"), b)
    await sub_a.start()
    await sub_b.start()
    try:
        await streams.xadd(
            PD_STREAM,
            {
                "payload": b'{"price":42}',
                "centrifugo-channels": f"{a},{b}",
                "centrifugo-idempotency-key": uuid.uuid4().hex,
                "centrifugo-tag-source": "billing",
            },
        )
        # A version that does not parse: skipped (acknowledged), the next entry goes through.
        await streams.xadd(
            PD_STREAM, {"payload": b"{}", "centrifugo-channels": a, "centrifugo-version": "x"}
        )
        await streams.xadd(PD_STREAM, {"payload": b'{"price":43}', "centrifugo-channels": a})
        await sub_a.wait_for(lambda: len(sub_a.pubs) >= 2, what="2 publications in a")
        await sub_b.wait_for(lambda: len(sub_b.pubs) >= 1, what="1 publication in b")
        assert [d for _, d in sub_a.pubs] == [{"price": 42}, {"price": 43}]
        assert [d for _, d in sub_b.pubs] == [{"price": 42}]
        history = await api_client.result("history", {"channel": a, "limit": -1})
        assert [p.get("tags") for p in history["publications"]] == [{"source": "billing"}, None]
        # Centrifugo's consumer metrics, summed over the workers: the skipped entry is done
        # (errors count the first test's Redis restart too: not compared).
        async with aiohttp.ClientSession() as http, http.get(f"{srv.url}/metrics") as resp:
            scrape = await resp.text()
        assert (
            'centrifugo_consumers_messages_processed_total{consumer_name="publications"} 3.0'
            in scrape
        )
        assert 'centrifugo_consumers_errors_total{consumer_name="publications"}' in scrape
    finally:
        await sub_a.stop()
        await sub_b.stop()
