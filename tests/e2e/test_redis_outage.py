"""Redis outages: workers boot, serve and heal while Redis is away; a frozen Redis is noticed.

- A worker (re)started while Redis is unreachable boots and serves: /health 500, subscribes
  refused with the temporary internal error (the SDK retries), API calls answer error 100.
  The gunicorn master never exits because Redis is away.
- When Redis comes back every worker heals by itself: /health 200, PUB/SUB resubscribed,
  waiting subscriptions go through, publications reach them.
- A frozen Redis (SIGSTOP) turns /health 500 within the keepalive bound (two PING intervals
  plus `engine.redis.io_timeout`), and 200 again after SIGCONT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from .helpers import RawWS, ServerHandle, start_server
from .redis_e2e_helpers import (
    ApiClient,
    RedisProcess,
    SdkSubscriber,
    redis_config,
    worker_of,
    worker_pids,
)

WORKERS = 2
IO_TIMEOUT = 2.0  # engine.redis.io_timeout of the frozen-Redis test
KEEPALIVE = 0.4  # app/engines/redis/pubsub.py KEEPALIVE: PING cadence of an idle link
POLL = 0.05  # interval of the deadline polls below (process lists, /health)


def uid() -> str:
    return uuid.uuid4().hex[:8]


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(POLL)


def health_answers(handle: ServerHandle) -> bool:
    """Readiness for a server whose Redis is down: /health answers at all (500)."""
    try:
        with urllib.request.urlopen(f"{handle.url}/health", timeout=0.5) as resp:
            return resp.status in (200, 500)
    except urllib.error.HTTPError as e:
        return e.code == 500
    except OSError:
        return False


async def refused_then_retrying(s: SdkSubscriber) -> None:
    """The SDK connects, its subscribe fails in the engine and, as in centrifuge, the
    connection is closed with 3004 (internal server error, reconnect): the SDK reconnects
    and tries again. Two such refusals, nothing subscribed."""
    await s.client.connect()
    await s.sub.subscribe()
    await s.wait_for(lambda: s.disconnect_codes.count(3004) >= 2, what="two 3004 disconnects")
    assert set(s.disconnect_codes) == {3004}, s.disconnect_codes
    assert "disconnected" not in s.client_log, s  # reconnecting, never given up
    assert s.subscribed == [], s


async def refused_by(srv: ServerHandle, pid: int, ch: str, attempts: int = 40) -> None:
    """A client that worker `pid` accepted connects, and its subscribe is refused with 3004.
    Each worker accepts on its own listener and the kernel picks one per connection (by
    address hash), so connections are opened until one is that worker's."""
    for _ in range(attempts):
        async with RawWS.connect(srv.ws_url) as ws:
            if worker_of(srv, ws.ws.get_extra_info("sockname")[1]) != pid:
                continue
            assert "connect" in await ws.connect_cmd(srv.token("u2"))
            await ws.send({"id": ws.next_id(), "subscribe": {"channel": ch}})
            assert (await ws.wait_closed())[0] == 3004
            return
    raise AssertionError(f"no connection reached worker {pid} in {attempts} attempts")


async def heals(api: ApiClient, s: SdkSubscriber, ch: str) -> None:
    """After Redis is back: /health 200 everywhere, the waiting subscription goes through
    and an API publish reaches it."""
    await api.wait_health(200, streak=10, timeout=15)
    await s.wait_for(lambda: len(s.subscribed) >= 1, timeout=15, what="subscribed after heal")
    res = await api.result("publish", {"channel": ch, "data": {"after": True}})
    await s.wait_for(lambda: (res["offset"], {"after": True}) in s.pubs, what="publication")


async def test_worker_replaced_while_redis_down_boots_and_heals(
    fresh_server_factory: Callable[..., ServerHandle], fresh_redis_server: RedisProcess
) -> None:
    """Redis down, one worker SIGKILLed: the master and the other worker stay, the replacement
    boots and refuses a subscribe with 3004, an SDK client is refused temporarily and keeps
    retrying;
    Redis back on the same port: /health 200, the client subscribes and receives."""
    srv = fresh_server_factory(redis_config(fresh_redis_server.port), workers=WORKERS)
    api = ApiClient(srv)
    ch = f"rec:outage-{uid()}"
    s = SdkSubscriber(srv.ws_url, srv.token("u1"), ch, "u1")
    try:
        await api.wait_nodes(WORKERS)
        victim, survivor = worker_pids(srv)
        fresh_redis_server.stop()
        await api.wait_health(500, streak=6, timeout=10)

        os.kill(victim, signal.SIGKILL)
        newcomers: set[int] = set()

        def replaced() -> bool:
            nonlocal newcomers
            pids = set(worker_pids(srv))  # read once: workers may come and go between reads
            newcomers = pids - {survivor, victim}
            return survivor in pids and len(newcomers) == 1

        await until(replaced, 15, "a replacement worker")
        (replacement,) = newcomers
        # The replacement, booted while Redis is down, serves and refuses like the survivor.
        await refused_by(srv, replacement, ch)
        await refused_then_retrying(s)
        body = await api.call("publish", {"channel": ch, "data": {"lost": True}})
        assert body.get("error", {}).get("code") == 100, body
        await api.wait_health(500, streak=6)
        assert srv.proc.poll() is None, srv.log_tail()
        assert set(worker_pids(srv)) == {survivor, replacement}

        fresh_redis_server.start()
        await heals(api, s, ch)
        assert set(worker_pids(srv)) == {survivor, replacement}
        await api.wait_nodes(WORKERS)
    finally:
        await s.stop()
        await api.close()


async def test_server_started_while_redis_down_boots_and_heals(
    redis_server_available: str,
) -> None:
    """The server starts with its Redis not yet running: every worker boots and answers
    /health 500, clients are refused temporarily, the API answers 100; once Redis starts,
    everything heals without a restart."""
    redis = RedisProcess()  # a port nothing listens on yet
    srv = start_server(redis_config(redis.port), workers=WORKERS, ready=health_answers)
    api = ApiClient(srv)
    ch = f"rec:late-{uid()}"
    s = SdkSubscriber(srv.ws_url, srv.token("u2"), ch, "u2")
    try:
        await api.wait_health(500, streak=10, timeout=10)
        assert len(worker_pids(srv)) == WORKERS
        await refused_then_retrying(s)
        body = await api.call("publish", {"channel": ch, "data": {"lost": True}})
        assert body.get("error", {}).get("code") == 100, body
        assert srv.proc.poll() is None, srv.log_tail()

        redis.start()
        await heals(api, s, ch)
        await api.wait_nodes(WORKERS)
        log = srv.log_text()
        assert f"127.0.0.1:{redis.port}" in log, log[-3000:]  # the warning names the address
    finally:
        await s.stop()
        await api.close()
        srv.stop()
        redis.cleanup()


async def test_frozen_redis_turns_health_500_within_bound(
    fresh_server_factory: Callable[..., ServerHandle], fresh_redis_server: RedisProcess
) -> None:
    """SIGSTOP Redis: /health turns 500 within 2 keepalive intervals + io_timeout on every
    worker, an API publish answers 100 after io_timeout (outcome unknown: a retry with the
    same idempotency_key stores it once); SIGCONT: /health 200 again."""
    cfg: dict[str, Any] = redis_config(fresh_redis_server.port)
    cfg["engine"]["redis"]["io_timeout"] = f"{IO_TIMEOUT:g}s"
    srv = fresh_server_factory(cfg, workers=WORKERS)
    api = ApiClient(srv)
    ch = f"rec:frozen-{uid()}"
    publish = {"channel": ch, "data": {"n": 1}, "idempotency_key": f"k-{uid()}"}
    try:
        await api.wait_nodes(WORKERS)
        await api.wait_health(200, streak=6)
        fresh_redis_server.freeze()
        frozen_at = time.monotonic()
        # Both workers: a streak of 500s over fresh connections (random workers).
        await api.wait_health(500, streak=8, timeout=2 * KEEPALIVE + IO_TIMEOUT + 2.0)
        first_500 = time.monotonic() - frozen_at
        t0 = time.monotonic()
        body = await api.call("publish", publish, timeout=15)
        waited = time.monotonic() - t0
        assert body.get("error", {}).get("code") == 100, body
        assert waited < IO_TIMEOUT + 1.0, f"publish waited {waited:.1f}s"

        fresh_redis_server.thaw()
        await api.wait_health(200, streak=10, timeout=10)
        # The outcome was unknown: the retry with the same key is applied at most once.
        res = await api.result("publish", publish)
        hist = await api.result("history", {"channel": ch, "limit": -1})
        assert [p["data"] for p in hist["publications"]] == [{"n": 1}]
        assert res["offset"] == 1
        print(f"first /health 500 {first_500:.2f}s after SIGSTOP")
    finally:
        fresh_redis_server.thaw()
        await api.close()
