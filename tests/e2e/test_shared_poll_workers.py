"""Shared poll on the Redis engine with two gunicorn workers: one worker polls each channel
for the deployment (app/sharedpoll/redis_link.py), clients on both workers get the updates.

A real redis-server, `python -m app --workers 2`, a real refresh backend (aiohttp, in this
module's event loop) that logs every call with its arrival time, and raw JSON clients placed
on each worker (psutil tells which worker holds a connection, as in test_redis_workers.py;
the polling worker is the one holding a TCP connection to the backend).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
import pytest_asyncio

from app.sharedpoll.redis_link import timings
from app.sharedpoll.signature import sign
from tests.support.poll_backend import Backend

from .helpers import ServerHandle
from .redis_e2e_helpers import (
    ApiClient,
    RedisProcess,
    WsClient,
    redis_config,
    worker_of,
    worker_pids,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

WORKERS = 2
SECRET = "e2e-workers-poll-secret"
USER = "alice"
INTERVAL = 0.25


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


def _config(redis_port: int, backend: Backend) -> dict[str, Any]:
    def namespace(name: str, **shared_poll: Any) -> dict[str, Any]:
        return {
            "name": name,
            "subscription_type": "shared_poll",
            "allow_subscribe_for_client": True,
            "shared_poll": {
                "refresh_interval": f"{int(INTERVAL * 1000)}ms",
                "mode": "versioned",
                "channel_shutdown_delay": "1ms",
                **shared_poll,
            },
        }

    cfg = redis_config(redis_port)
    cfg["shared_poll"] = {"hmac_secret_key": SECRET}
    cfg["channel"] = {
        "proxy": {
            "shared_poll_refresh": {
                "endpoint": f"http://127.0.0.1:{backend.port}/refresh",
                "timeout": "2s",
            }
        },
        "namespaces": [namespace("poll"), namespace("pollpub", publish_enabled=True)],
    }
    return cfg


@pytest.fixture(scope="module")
def srv(server_factory, redis_server: RedisProcess, backend: Backend) -> ServerHandle:
    return server_factory(_config(redis_server.port, backend), workers=WORKERS)


def channel(ns: str) -> str:
    return f"{ns}:{uuid.uuid4().hex[:8]}"


async def clients_on_every_worker(
    srv: ServerHandle, closing: list[WsClient], tries: int = 60
) -> dict[int, WsClient]:
    """One connected client on each worker (extra connections are closed again)."""
    by_worker: dict[int, WsClient] = {}
    for _ in range(tries):
        c = WsClient(srv.ws_url, USER)
        await c.connect(srv.token(USER))
        pid = worker_of(srv, c.local_port)
        assert pid is not None, "connection not found on any worker"
        if pid in by_worker:
            await c.close()
            continue
        closing.append(c)
        by_worker[pid] = c
        if len(by_worker) == WORKERS:
            return by_worker
    raise AssertionError(f"{tries} connections never covered every worker: {by_worker}")


async def track(c: WsClient, ch: str, key: str) -> None:
    reply = await c.command({"subscribe": {"channel": ch, "type": 4}})
    assert "subscribe" in reply, reply
    now = int(time.time())
    batch = {
        "signature": sign(SECRET, ch, [key], USER, now, now + 3600),
        "items": [{"key": key, "version": 0}],
    }
    reply = await c.command({"sub_refresh": {"channel": ch, "type": 1, "track": [batch]}})
    assert "sub_refresh" in reply, reply


def versions(c: WsClient, ch: str) -> list[int]:
    return [p.get("version", 0) for p in c.pubs[ch]]


def polling_worker(srv: ServerHandle, backend: Backend) -> int:
    """The worker holding connections to the refresh backend: the only one that polls."""
    pids = []
    for pid in worker_pids(srv):
        conns = psutil.Process(pid).net_connections(kind="tcp")
        if any(c.raddr and c.raddr.port == backend.port for c in conns):
            pids.append(pid)
    assert len(pids) == 1, f"workers calling the backend: {pids}"
    return pids[0]


def call_gaps(backend: Backend, ch: str, start: int, count: int) -> list[float]:
    """Seconds between the calls for `ch` numbered start..start+count (in arrival order)."""
    times = [
        t
        for t, (_, body) in zip(backend.arrived, backend.requests, strict=True)
        if body["channel"] == ch
    ][start : start + count]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest_asyncio.fixture(loop_scope="module")
async def closing() -> AsyncIterator[list[WsClient]]:
    items: list[WsClient] = []
    yield items
    for c in items:
        await c.close()


async def test_one_refresh_call_per_interval_while_both_workers_deliver(
    srv: ServerHandle, backend: Backend, closing: list[WsClient]
) -> None:
    ch = channel("poll")
    backend.set(ch, "k", {"v": 1}, 1)
    clients = list((await clients_on_every_worker(srv, closing)).values())
    # One join at a time. A client joining at version 0 a key the leader already holds makes
    # the leader poll it once without its version (needs_broadcast), and that poll is what
    # brings the joiner version 1. Tracked together, the second client could get version 1
    # from the first poll's fan-out while its join was still on the way to the leader, whose
    # broadcast poll then came after `seen` below (CI saw it once).
    for c in clients:
        await track(c, ch, "k")
        await c.wait_for(lambda c=c: versions(c, ch) == [1], what="version 1")
    seen = len(backend.of(ch))
    await backend.wait(lambda: len(backend.of(ch)) >= seen + 7, timeout=20 * INTERVAL)
    for body in backend.of(ch)[seen:]:
        assert body["items"] == [{"key": "k", "version": 1}]
    # Two pollers would put calls closer together than an interval.
    gaps = call_gaps(backend, ch, seen + 1, 6)
    assert all(gap > INTERVAL * 0.6 for gap in gaps), gaps
    polling_worker(srv, backend)  # exactly one worker talks to the backend

    backend.set(ch, "k", {"v": 2}, 2)
    for c in clients:
        await c.wait_for(lambda c=c: versions(c, ch) == [1, 2], what="version 2")
        assert c.pubs[ch][-1]["data"] == {"v": 2}


async def test_shared_poll_publish_reaches_clients_on_every_worker(
    srv: ServerHandle, backend: Backend, closing: list[WsClient]
) -> None:
    ch = channel("pollpub")
    backend.set(ch, "p", "old", 1)
    clients = list((await clients_on_every_worker(srv, closing)).values())
    for c in clients:
        await track(c, ch, "p")
    for c in clients:
        await c.wait_for(lambda c=c: versions(c, ch) == [1], what="version 1")
    api = ApiClient(srv)
    try:
        # Several calls: each lands on a random worker, and every one reaches both.
        for version in (5, 6, 7):
            params = {"channel": ch, "key": "p", "version": version, "data": f"v{version}"}
            assert await api.result("shared_poll_publish", params) == {}
    finally:
        await api.close()
    for c in clients:
        await c.wait_for(lambda c=c: versions(c, ch) == [1, 5, 6, 7], what="published")


async def test_polling_resumes_after_sigkill_of_the_polling_worker(
    fresh_server_factory, redis_server: RedisProcess, backend: Backend, closing: list[WsClient]
) -> None:
    srv = fresh_server_factory(_config(redis_server.port, backend), workers=WORKERS)
    ch = channel("poll")
    backend.set(ch, "k", "v1", 1)
    by_worker = await clients_on_every_worker(srv, closing)
    for c in by_worker.values():
        await track(c, ch, "k")
    for c in by_worker.values():
        await c.wait_for(lambda c=c: versions(c, ch) == [1], what="version 1")
    seen = len(backend.of(ch))
    await backend.wait(lambda: len(backend.of(ch)) >= seen + 2)  # the timer polls
    leader = polling_worker(srv, backend)
    survivor = next(c for pid, c in by_worker.items() if pid != leader)

    os.kill(leader, signal.SIGKILL)
    killed_at = time.monotonic()
    backend.set(ch, "k", "v2", 2)
    await survivor.wait_for(lambda: versions(survivor, ch) == [1, 2], timeout=15, what="v2")
    took = time.monotonic() - killed_at
    tick, lease = timings(INTERVAL)
    assert took < lease + tick + 2 * INTERVAL + 1.0, took

    # And on it goes, from one worker: one call per interval again.
    seen = len(backend.of(ch))
    await backend.wait(lambda: len(backend.of(ch)) >= seen + 5, timeout=20 * INTERVAL)
    gaps = call_gaps(backend, ch, seen + 1, 4)
    assert all(gap > INTERVAL * 0.6 for gap in gaps), gaps
