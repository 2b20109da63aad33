"""Graceful drain end to end: SIGTERM and gunicorn worker rotation lose no publication.

Real redis-server, real servers sharing it (same key prefix, so they form one cluster), and
centrifuge-python clients subscribed with recovery (namespace `rec` forces it). A publisher keeps
publishing while servers or workers go away; every client must end with exactly the published
offsets, in order, without gaps or duplicates, and the right data at each offset.

For the whole-server SIGTERM the clients reach the server through a small TCP proxy standing in
for a load balancer: once the server is draining, new connections go to the second server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, RedisProcess, Watched, redis_config, worker_pids

SHUTDOWN_TIMEOUT = 20.0  # room for the slow batch on a loaded machine
BATCH = 5_000  # publications in the slow batch (~2 s) that is in flight at SIGTERM


def uid() -> str:
    return uuid.uuid4().hex[:8]


def shared_config(redis_port: int) -> dict[str, Any]:
    """One config for every server of a test: same Redis prefix and keys (one cluster)."""
    cfg = redis_config(redis_port, shutdown={"timeout": f"{SHUTDOWN_TIMEOUT:g}s"})
    cfg["channel"]["namespaces"].append(
        {"name": "big", "history_size": BATCH * 2, "history_ttl": "300s"}
    )
    cfg["client"] = {**cfg["client"], "token": {"hmac_secret_key": "drain-" + uuid.uuid4().hex}}
    cfg["http_api"] = {"key": "api-" + uid()}
    return cfg


# --------------------------------------------------------------------------------------------
# a switchable TCP proxy (the load balancer in front of the servers)


class TcpProxy:
    """Forwards each accepted connection to `upstream` (a port, read at connect time)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# clients


class Subscriber(Watched):
    """centrifuge-python client with one subscription; records offsets, data and close codes."""

    def __init__(self, url: str, token: str, channel: str, name: str) -> None:
        super().__init__()
        self.name = name
        self.pubs: list[tuple[int, Any]] = []
        self.codes: list[int] = []  # codes of the connecting events (server disconnects)
        self.subscribed: list[Any] = []
        watched = self

        class Ev(ClientEventHandler):
            async def on_connecting(self, ctx: Any) -> None:
                watched.codes.append(ctx.code)
                watched._changed()

        class SubEv(SubscriptionEventHandler):
            async def on_subscribed(self, ctx: Any) -> None:
                watched.subscribed.append(ctx)
                watched._changed()

            async def on_publication(self, ctx: Any) -> None:
                watched.pubs.append((ctx.pub.offset, ctx.pub.data))
                watched._changed()

        self.client = Client(
            url, events=Ev(), token=token, min_reconnect_delay=0.05, max_reconnect_delay=0.5
        )
        self.sub = self.client.new_subscription(channel, events=SubEv())

    def __repr__(self) -> str:
        return f"Subscriber({self.name})"

    def describe(self) -> str:
        return f"codes={self.codes} subscribed={self.subscribed} last={self.offsets()[-5:]}"

    def offsets(self) -> list[int]:
        return [o for o, _ in self.pubs]

    async def start(self) -> None:
        await self.client.connect()
        await self.sub.subscribe()
        await self.wait_for(lambda: len(self.subscribed) >= 1, what="subscribed")

    async def stop(self) -> None:
        await self.client.disconnect()


class Publisher:
    """Publishes {"n": k} to one channel through the server API until stopped; a steady
    stream (one every `pace` seconds) so a reconnect gap stays far below the history size."""

    def __init__(self, api: ApiClient, channel: str, pace: float = 0.01) -> None:
        self.api = api
        self.channel = channel
        self.pace = pace
        self.sent: list[tuple[int, int]] = []  # (n, offset)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            result = await self.api.result("publish", {"channel": self.channel, "data": {"n": n}})
            self.sent.append((n, result["offset"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pace)  # pacing, not sync

    async def stop(self) -> list[tuple[int, int]]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.sent

    async def close(self) -> None:
        """Cleanup after a failed test: stop without raising."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def check_exact(subs: list[Subscriber], sent: list[tuple[int, int]]) -> None:
    """Every subscriber has every publication once, in order, with the published data."""
    offsets = [o for _, o in sent]
    assert offsets == list(range(1, len(sent) + 1)), "publisher saw gaps in the stream"
    for s in subs:
        assert s.offsets() == offsets, f"{s!r}: {describe_gaps(s.offsets(), offsets)}"
        assert [d["n"] for _, d in s.pubs] == [n for n, _ in sent], f"{s!r}: data mismatch"


def describe_gaps(got: list[int], want: list[int]) -> str:
    dups = [o for o, c in collections.Counter(got).items() if c > 1]
    missing = sorted(set(want) - set(got))
    return f"{len(got)} of {len(want)}; duplicates {dups[:10]}; missing {missing[:10]}"


async def wait_caught_up(subs: list[Subscriber], last: int) -> None:
    await asyncio.gather(
        *(
            s.wait_for(lambda s=s: bool(s.pubs) and s.pubs[-1][0] >= last, what=f"offset {last}")
            for s in subs
        )
    )


# --------------------------------------------------------------------------------------------


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    items: list[Any] = []
    yield items
    for item in reversed(items):
        with contextlib.suppress(Exception):
            if isinstance(item, Subscriber):
                await item.stop()
            else:
                await item.close()


async def test_sigterm_drains_to_other_server_without_loss(
    fresh_server_factory, redis_server: RedisProcess, cleanup: list[Any]
) -> None:
    cfg = shared_config(redis_server.port)
    a: ServerHandle = fresh_server_factory(cfg, workers=2)
    b: ServerHandle = fresh_server_factory(cfg, workers=1)
    proxy = TcpProxy(a.port)
    await proxy.start()
    cleanup.append(proxy)
    api_a, api_b = ApiClient(a), ApiClient(b)
    cleanup += [api_a, api_b]

    channel = f"rec:drain-{uid()}"
    url = f"ws://127.0.0.1:{proxy.port}/connection/websocket"
    subs = [Subscriber(url, a.token(f"user-{i}"), channel, f"s{i}") for i in range(6)]
    for s in subs:
        cleanup.append(s)
        await s.start()
    publisher = Publisher(api_b, channel)
    cleanup.append(publisher)
    publisher.start()
    await asyncio.gather(*(s.wait_for(lambda s=s: len(s.pubs) >= 10) for s in subs))

    # A slow API call in flight on A when it gets SIGTERM: it must complete, exactly once each.
    batch_channel = f"big:batch-{uid()}"
    # Each publish is followed by a history read: a sequential batch awaits every non-publish
    # command, so the batch takes one Redis round trip per command (a few seconds) instead of
    # a few pipelined writes, and is surely still running while the worker drains.
    commands = []
    for i in range(BATCH):
        commands.append({"publish": {"channel": batch_channel, "data": {"i": i}}})
        commands.append({"history": {"channel": batch_channel, "limit": 0}})
    batch = asyncio.get_running_loop().create_task(
        api_a.call("batch", {"commands": commands}, timeout=30)
    )
    while (await api_b.result("history", {"channel": batch_channel, "limit": 0})).get(
        "offset", 0
    ) == 0:
        assert not batch.done(), f"batch finished before SIGTERM: {str(batch.result())[:300]}"
        await asyncio.sleep(0.01)  # poll interval

    proxy.upstream = b.port  # the load balancer takes A out of rotation
    started = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)

    await asyncio.gather(
        *(s.wait_for(lambda s=s: 3001 in s.codes, what="3001 from draining server") for s in subs)
    )
    # The worker drains (and then closes its engine) while the batch is still running.
    assert not batch.done(), "batch finished before the drain: make it longer"
    rc = await asyncio.to_thread(a.proc.wait, SHUTDOWN_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    assert rc == 0, a.log_tail()
    assert elapsed < SHUTDOWN_TIMEOUT, f"server exited after {elapsed:.1f}s"

    reply = await batch
    assert len(reply["replies"]) == 2 * BATCH
    replies = reply["replies"][::2]  # the publishes
    assert [r.get("publish", {}).get("offset") for r in replies] == list(range(1, BATCH + 1)), [
        r for r in reply["replies"] if "error" in r
    ][:3]
    stored = (await api_b.result("history", {"channel": batch_channel, "limit": -1}))[
        "publications"
    ]
    assert [p["data"]["i"] for p in stored] == list(range(BATCH)), "batch applied twice or not"

    # Everyone resubscribed on B with recovery, then the stream goes on a little.
    await asyncio.gather(*(s.wait_for(lambda s=s: len(s.subscribed) >= 2) for s in subs))
    for s in subs:
        ctx = s.subscribed[-1]
        assert ctx.was_recovering and ctx.recovered, (s, ctx)
    mark = max(o for _, o in publisher.sent)
    await wait_caught_up(subs, mark + 10)
    sent = await publisher.stop()
    await wait_caught_up(subs, sent[-1][1])
    check_exact(subs, sent)


async def test_worker_rotation_loses_nothing(
    fresh_server_factory, redis_server: RedisProcess, cleanup: list[Any]
) -> None:
    cfg = shared_config(redis_server.port)
    srv: ServerHandle = fresh_server_factory(
        cfg, workers=2, args=("--max-requests", "30", "--max-requests-jitter", "10")
    )
    api = ApiClient(srv)
    cleanup.append(api)
    channel = f"rec:rot-{uid()}"
    subs = [Subscriber(srv.ws_url, srv.token(f"user-{i}"), channel, f"s{i}") for i in range(6)]
    for s in subs:
        cleanup.append(s)
        await s.start()
    first_workers = set(worker_pids(srv))

    # Every publish is a request: workers pass the limit over and over while publishing.
    publisher = Publisher(api, channel, pace=0.01)
    cleanup.append(publisher)
    publisher.start()
    deadline = time.monotonic() + 30
    # Until both original workers were replaced, and some more.
    while (
        first_workers & set(worker_pids(srv))
        or srv.log_text().count("Max requests, shutting down") < 3
    ):
        assert time.monotonic() < deadline, "workers never rotated\n" + srv.log_tail()
        await asyncio.sleep(0.1)  # poll interval
    sent = await publisher.stop()
    await wait_caught_up(subs, sent[-1][1])
    check_exact(subs, sent)

    # Rotated workers disconnected their clients for a reconnect, which then recovered.
    assert any(3001 in s.codes for s in subs), [s.codes for s in subs]
    for s in subs:
        for ctx in s.subscribed[1:]:
            assert ctx.was_recovering and ctx.recovered, (s, ctx)
