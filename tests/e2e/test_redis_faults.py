"""Redis faults: the Redis server restarts under connected clients; a malformed address.

Each test owns its redis-server (no persistence), so a restart loses every stream: the epoch of
a channel changes, which subscribers must learn as `recovered: false`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from .helpers import REPO_ROOT, ServerHandle, free_port, prepare_config
from .redis_e2e_helpers import (
    ApiClient,
    RedisProcess,
    SdkSubscriber,
    WsClient,
    redis_config,
    wait_all,
)

WORKERS = 2


def uid() -> str:
    return uuid.uuid4().hex[:8]


async def _subscribers(
    srv: ServerHandle, ch: str, n_sdk: int, n_raw: int
) -> tuple[list[SdkSubscriber], list[WsClient]]:
    subs = [SdkSubscriber(srv.ws_url, srv.token(f"s{i}"), ch, f"s{i}") for i in range(n_sdk)]
    raws = [WsClient(srv.ws_url, f"raw{i}") for i in range(n_raw)]
    for s in subs:
        await s.start()
    for i, c in enumerate(raws):
        await c.connect(srv.token(f"r{i}"))
        await c.subscribe(ch)
    return subs, raws


async def _close_all(subs: list[SdkSubscriber], raws: list[WsClient], api: ApiClient) -> None:
    for s in subs:
        await s.stop()
    for c in raws:
        await c.close()
    await api.close()


def _stop_and_take_log(srv: ServerHandle) -> str:
    """Stop the server inside the test (so an xfail covers its log check) and return its log."""
    text = srv.log_text()
    srv.stop(check_log=False)
    return text


async def test_redis_down_health_500_and_fast_errors(
    fresh_server_factory, fresh_redis_server: RedisProcess
) -> None:
    """While Redis is down: /health 500 on every worker, API calls fail with 100 within a few
    seconds, clients stay connected; /health 200 again once Redis is back."""
    srv = fresh_server_factory(redis_config(fresh_redis_server.port), workers=WORKERS)
    api = ApiClient(srv)
    ch = f"rec:down-{uid()}"
    subs, raws = [], []
    try:
        subs, raws = await _subscribers(srv, ch, 3, 3)
        await api.wait_health(200, streak=6)
        # Every worker must be up before Redis goes: a worker still booting would fail
        # its start-up instead of showing the running node's behaviour under test.
        await api.wait_nodes(WORKERS)
        assert (await api.result("publish", {"channel": ch, "data": {"n": 1}}))["offset"] == 1
        await wait_all(subs, lambda s: len(s.pubs) >= 1)

        fresh_redis_server.stop()
        await api.wait_health(500, streak=8, timeout=10)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{srv.url}/health") as resp:
                assert (resp.status, await resp.json()) == (500, {"error": "engine unavailable"})
        for method, params in [
            ("publish", {"channel": ch, "data": {"lost": True}}),
            ("history", {"channel": ch, "limit": -1}),
            ("presence", {"channel": ch}),
        ]:
            t0 = time.monotonic()
            body = await api.call(method, params, timeout=15)
            elapsed = time.monotonic() - t0
            assert body.get("error", {}).get("code") == 100, (method, body)
            assert elapsed < 5, f"{method} with Redis down took {elapsed:.1f}s"
        assert all(c.closed is None for c in raws)
        assert all(s.client_log == ["connecting", "connected"] for s in subs)

        fresh_redis_server.start()
        await api.wait_health(200, streak=10, timeout=15)
        assert all(c.closed is None for c in raws)
        # Checked before the clients leave: their cleanup right after a restart is
        # test_redis_restart_epoch_change_recovered_false's business.
        log = srv.log_text()
        assert "Traceback" not in log, log[-6000:]
        assert "pub/sub connection lost, reconnecting" in log
    finally:
        await _close_all(subs, raws, api)
        _stop_and_take_log(srv)


async def _publish_burst(api: ApiClient, ch: str, tag: str, n: int) -> dict[int, dict[str, Any]]:
    """n concurrent API publishes (fresh connections, so several at once on each worker);
    returns offset -> {"epoch", "data"} of each."""

    async def one(i: int) -> dict[str, Any]:
        res = await api.result("publish", {"channel": ch, "data": {tag: i}})
        return {"offset": res["offset"], "epoch": res["epoch"], "data": {tag: i}}

    results = await asyncio.gather(*(one(i) for i in range(n)))
    return {r["offset"]: r for r in results}


async def test_redis_restart_epoch_change_recovered_false(
    fresh_server_factory, fresh_redis_server: RedisProcess
) -> None:
    """Redis restarts empty under subscribers while the backend keeps publishing: nodes
    reconnect and resubscribe by themselves, publications succeed, the first one opens a new
    epoch, every subscriber gets unsubscribe 2500 and (SDK) resubscribes with recovered=false;
    from then on publications reach everyone on every worker."""
    srv = fresh_server_factory(redis_config(fresh_redis_server.port), workers=WORKERS)
    api = ApiClient(srv)
    ch = f"rec:restart-{uid()}"
    subs, raws = [], []
    try:
        subs, raws = await _subscribers(srv, ch, 6, 4)
        old_epoch = subs[0].subscribed[0].stream_position.epoch
        # Concurrent publishes: each worker uses several pooled Redis connections.
        before = await _publish_burst(api, ch, "before", 24)
        assert sorted(before) == list(range(1, 25))
        assert {r["epoch"] for r in before.values()} == {old_epoch}
        await wait_all(subs, lambda s: len(s.pubs) >= 24)
        await wait_all(raws, lambda c: len(c.pubs[ch]) >= 24)
        await api.wait_nodes(WORKERS)  # no worker may still be booting when Redis goes

        fresh_redis_server.stop()
        await api.wait_health(500, streak=8, timeout=10)
        fresh_redis_server.start()
        await api.wait_health(200, streak=10, timeout=15)

        # Publishing goes on: every publication must succeed, in a new stream (new epoch).
        after = await _publish_burst(api, ch, "after", 12)
        assert sorted(after) == list(range(1, 13))
        (new_epoch,) = {r["epoch"] for r in after.values()}
        assert new_epoch != old_epoch

        # Every subscriber's position is gone: unsubscribe 2500, and the SDK resubscribes
        # (recovering from offset 24 of the old epoch) and learns recovered=false.
        await wait_all(
            subs, lambda s: len(s.subscribed) >= 2, what="resubscribed after epoch change"
        )
        for s in subs:
            ctx = s.subscribed[-1]
            assert (ctx.was_recovering, ctx.recovered) == (True, False), s
            assert ctx.stream_position.epoch == new_epoch
            assert 1 <= ctx.stream_position.offset <= 12
            assert s.client_log == ["connecting", "connected"], s  # no reconnect needed
        unsub_2500 = {"channel": ch, "unsubscribe": {"code": 2500, "reason": "insufficient state"}}
        await wait_all(raws, lambda c: unsub_2500 in c.pushes, what="unsubscribe 2500")
        # Raw clients resubscribe as the SDK does (recover from their old position).
        for c in raws:
            result = await c.subscribe(ch, recover=True, offset=24, epoch=old_epoch)
            assert result.get("recovered", False) is False
            assert (result.get("offset"), result["epoch"]) == (12, new_epoch)

        res = await api.result("publish", {"channel": ch, "data": {"final": True}})
        assert (res["offset"], res["epoch"]) == (13, new_epoch)
        await wait_all(subs, lambda s: s.pubs[-1][0] == 13, what="publication after restart")
        await wait_all(raws, lambda c: c.pubs[ch][-1]["offset"] == 13, what="final publication")
        first = [(o, before[o]["data"]) for o in range(1, 25)]
        for s in subs:
            # Live publications continue right after the position the resubscribe got.
            top = s.subscribed[-1].stream_position.offset
            later = [(o, after[o]["data"]) for o in range(top + 1, 13)]
            assert s.pubs == first + later + [(13, {"final": True})], s
        for c in raws:
            assert [(p["offset"], p["data"]) for p in c.pubs[ch]] == first + [
                (13, {"final": True})
            ], c
        hist = await api.result("history", {"channel": ch, "limit": -1})
        assert [p["offset"] for p in hist["publications"]] == list(range(1, 14))
        assert len((await api.result("info"))["nodes"]) == WORKERS
    finally:
        await _close_all(subs, raws, api)
        log = _stop_and_take_log(srv)
    assert "Traceback" not in log, log[-6000:]


async def test_client_leaving_while_redis_down_logs_no_traceback(
    fresh_server_factory, fresh_redis_server: RedisProcess
) -> None:
    srv = fresh_server_factory(redis_config(fresh_redis_server.port), workers=1)
    api = ApiClient(srv)
    ch = f"rec:leave-{uid()}"
    subs, raws = [], []
    try:
        subs, raws = await _subscribers(srv, ch, 0, 1)
        fresh_redis_server.stop()
        await api.wait_health(500, streak=3, timeout=10)
        await raws[0].close()
        # The leaving client's presence removal fails against the dead Redis; await its
        # warning, then one more request to the (single) worker orders us after its logging.
        deadline = time.monotonic() + 10
        while f"presence_remove on '{ch}' failed" not in srv.log_text():
            assert time.monotonic() < deadline, srv.log_tail()
            await asyncio.sleep(0.05)  # poll interval of the log
        assert await api.health() == 500
    finally:
        await _close_all(subs, raws, api)
        log = _stop_and_take_log(srv)
    assert "Traceback" not in log, log[-3000:]


def test_start_with_malformed_redis_address(tmp_path: Path) -> None:
    """`python -m app -c cfg` with a Redis address it cannot parse: exit code 1, one `error:`
    line, no traceback. (Redis merely down at start-up is no error: the server starts and
    heals, see test_redis_outage.py.)"""
    cfg = prepare_config(redis_config(free_port()))
    cfg["engine"]["redis"]["address"] = "ftp://127.0.0.1:6379"
    cfg.setdefault("http_server", {})["port"] = free_port()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "app", "-c", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "'ftp'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
