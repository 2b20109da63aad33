"""Helpers for the Redis engine end-to-end tests (multi-worker servers, Redis faults).

- `RedisProcess` (tests/support/redis_server.py): a throw-away `redis-server` (no persistence)
  on a free 127.0.0.1 port that a test can stop, freeze and start again on the same port.
- `redis_config(port)`: a server config using it, with a recoverable namespace `rec`.
- `worker_pids` / `worker_of`: which gunicorn worker owns a given client socket (psutil).
- `WsClient`: a raw JSON-protocol client with a background reader; tests await conditions on
  what it received (`wait_for`), never sleep.
- `SdkSubscriber`: a centrifuge-python client with one subscription, recording its events.
- `ApiClient`: POST /api/<method> over a fresh TCP connection per call, so calls land on random
  workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import aiohttp
import psutil
from centrifuge import (
    Client,
    ClientEventHandler,
    SubscriptionEventHandler,
)

# RedisProcess is re-exported: the e2e tests take it from here with the other Redis helpers.
from tests.support.redis_server import RedisProcess as RedisProcess

from .helpers import ServerHandle, start_server

EVENT_TIMEOUT = 10.0


def redis_config(port: int, **extra: Any) -> dict[str, Any]:
    """Server config on the Redis engine with namespace `rec` (history, recovery, presence)."""
    # Own key prefix: servers sharing one redis-server must not see each other's nodes.
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg: dict[str, Any] = {
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{port}", "prefix": prefix},
        },
        "channel": {
            "namespaces": [
                {
                    "name": "rec",
                    "history_size": 1000,
                    "history_ttl": "300s",
                    "force_recovery": True,
                    "presence": True,
                    "join_leave": False,
                    "allow_subscribe_for_client": True,
                    "allow_history_for_subscriber": True,
                    "allow_presence_for_subscriber": True,
                },
                {"name": "plain", "allow_subscribe_for_client": True},
            ]
        },
        "client": {"recovery_max_publication_limit": 1000},
    }
    for key, value in extra.items():
        cfg[key] = value
    return cfg


# --------------------------------------------------------------------------------------------
# gunicorn workers


def worker_pids(handle: ServerHandle) -> list[int]:
    """Pids of the live gunicorn workers of `handle` (children of the master process)."""
    return sorted(p.pid for p in psutil.Process(handle.proc.pid).children() if _alive(p))


def _alive(p: psutil.Process) -> bool:
    # A killed worker can be reaped between listing the children and reading its status.
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_of(handle: ServerHandle, local_port: int) -> int | None:
    """The worker pid holding the server end of the TCP connection from `local_port`."""
    for pid in worker_pids(handle):
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for c in conns:
            if c.raddr and c.raddr.port == local_port and c.laddr.port == handle.port:
                return pid
    return None


def sdk_local_port(client: Client) -> int:
    """Local TCP port of a connected centrifuge-python client (its websockets connection)."""
    conn = client._conn  # the SDK has no public accessor for its socket
    assert conn is not None, "client has no connection"
    return int(conn.local_address[1])


# --------------------------------------------------------------------------------------------
# awaiting conditions


class Watched:
    """Something that changes as messages arrive; `wait_for(pred)` awaits a condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def _changed(self) -> None:
        # Wake every waiter once; each re-checks its predicate and waits on the new event.
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(
        self, pred: Callable[[], bool], timeout: float = EVENT_TIMEOUT, what: str = ""
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not pred():
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self!r}: not within {timeout}s: {what or pred}\n{self.describe()}"
            ) from None

    def describe(self) -> str:
        return ""


async def wait_all(items: Iterable[Watched], pred: Callable[[Any], bool], **kw: Any) -> None:
    """`wait_for` on every item concurrently (pred gets the item)."""
    await asyncio.gather(*(it.wait_for(lambda it=it: pred(it), **kw) for it in items))


# --------------------------------------------------------------------------------------------
# raw JSON protocol client


class WsClient(Watched):
    """A JSON-protocol client; a background task reads every frame.

    `pubs[channel]` holds the pub objects received (live pushes and subscribe-reply
    publications, in arrival order); `pushes` every push; `closed` the close (code, reason).
    """

    def __init__(self, url: str, name: str = "") -> None:
        super().__init__()
        self.url = url
        self.name = name
        self.pubs: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.pushes: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str] | None = None
        self.client_id = ""
        self.local_port = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"WsClient({self.name or self.client_id})"

    def describe(self) -> str:
        counts = {ch: [p.get("offset") for p in ps][-5:] for ch, ps in self.pubs.items()}
        return f"closed={self.closed} pushes(last 5)={self.pushes[-5:]} pubs(last 5)={counts}"

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, autoping=True, max_msg_size=0)
        self.local_port = self._ws.get_extra_info("sockname")[1]
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        code: int | None = None
        reason = ""
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    for line in msg.data.split("\n"):
                        if line.strip():
                            self._on_reply(json.loads(line))
                    self._changed()
                    continue
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    code, reason = msg.data, msg.extra or ""
                break
        finally:
            self.closed = (code if code is not None else ws.close_code, reason)
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self!r} closed: {self.closed}"))
            self._changed()

    def _on_reply(self, obj: dict[str, Any]) -> None:
        if not obj:  # server ping: answer with pong
            if self._ws is not None and not self._ws.closed:
                asyncio.get_running_loop().create_task(self._ws.send_str("{}"))
            return
        if "id" in obj and obj["id"]:
            fut = self._replies.pop(obj["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(obj)
            return
        push = obj.get("push", {})
        self.pushes.append(push)
        if "pub" in push:
            self.pubs[push.get("channel", "")].append(push["pub"])

    async def command(self, body: dict[str, Any], timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        cmd_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[cmd_id] = fut
        await self._ws.send_str(json.dumps({"id": cmd_id, **body}))
        return await asyncio.wait_for(fut, timeout)

    async def connect(self, token: str) -> dict[str, Any]:
        if self._ws is None:
            await self.open()
        reply = await self.command({"connect": {"token": token}})
        assert "error" not in reply, f"connect failed: {reply}"
        self.client_id = reply["connect"]["client"]
        return reply["connect"]

    async def subscribe(self, channel: str, **fields: Any) -> dict[str, Any]:
        reply = await self.command({"subscribe": {"channel": channel, **fields}})
        assert "error" not in reply, f"subscribe {channel} failed: {reply}"
        result = reply["subscribe"]
        self.pubs[channel].extend(result.get("publications", ()))
        return result

    def offsets(self, channel: str) -> list[int]:
        return [p.get("offset", 0) for p in self.pubs[channel]]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()


# --------------------------------------------------------------------------------------------
# centrifuge-python


class SdkSubscriber(Watched):
    """A centrifuge-python Client subscribed to one channel, recording what the SDK reports.

    `pubs` holds (offset, data) of every publication event; `subscribed` every
    SubscribedContext; `sub_errors` the subscription's errors (e.g. a temporary ReplyError
    of a refused subscribe, which the SDK retries); `client_log` the client's connection
    events by name, `disconnect_codes` the code of each disconnect (with or without
    a reconnect).
    """

    def __init__(self, url: str, token: str, channel: str, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.channel = channel
        self.pubs: list[tuple[int, Any]] = []
        self.subscribed: list[Any] = []
        self.unsubscribed: list[Any] = []
        self.subscribing: list[Any] = []
        self.sub_errors: list[Any] = []  # the errors of failed subscribe attempts
        self.client_log: list[str] = []
        self.disconnect_codes: list[int] = []
        watched = self

        class Ev(ClientEventHandler):
            async def on_connecting(self, ctx: Any) -> None:
                watched.client_log.append("connecting")
                if ctx.code >= 3000:  # a disconnect the SDK reconnects after
                    watched.disconnect_codes.append(ctx.code)
                watched._changed()

            async def on_connected(self, ctx: Any) -> None:
                watched.client_log.append("connected")
                watched._changed()

            async def on_disconnected(self, ctx: Any) -> None:
                watched.client_log.append("disconnected")
                watched.disconnect_codes.append(ctx.code)
                watched._changed()

        class SubEv(SubscriptionEventHandler):
            async def on_subscribing(self, ctx: Any) -> None:
                watched.subscribing.append(ctx)
                watched._changed()

            async def on_subscribed(self, ctx: Any) -> None:
                watched.subscribed.append(ctx)
                watched._changed()

            async def on_unsubscribed(self, ctx: Any) -> None:
                watched.unsubscribed.append(ctx)
                watched._changed()

            async def on_error(self, ctx: Any) -> None:
                watched.sub_errors.append(ctx.error)
                watched._changed()

            async def on_publication(self, ctx: Any) -> None:
                watched.pubs.append((ctx.pub.offset, ctx.pub.data))
                watched._changed()

        self.client = Client(
            url,
            events=Ev(),
            token=token,
            proxy=None,
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.5,
        )
        self.sub = self.client.new_subscription(channel, events=SubEv())

    def __repr__(self) -> str:
        return f"SdkSubscriber({self.name})"

    def describe(self) -> str:
        return (
            f"client_log={self.client_log} subscribed={self.subscribed} "
            f"unsubscribed={self.unsubscribed} last offsets={[o for o, _ in self.pubs][-5:]}"
        )

    def offsets(self) -> list[int]:
        return [o for o, _ in self.pubs]

    async def start(self) -> None:
        await self.client.connect()
        await self.sub.subscribe()
        await self.wait_for(lambda: len(self.subscribed) >= 1, what="first subscribed")

    async def stop(self) -> None:
        await self.client.disconnect()


# --------------------------------------------------------------------------------------------
# server API


@contextlib.contextmanager
def two_servers(
    config: dict[str, Any], workers: int
) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    """Two server processes ("nodes") on one config, as the multi-node e2e modules run
    them; both stopped however the block ends."""
    a = start_server(config, workers=workers)
    try:
        b = start_server(config, workers=workers)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@contextlib.asynccontextmanager
async def api_pair(
    nodes: tuple[ServerHandle, ServerHandle],
) -> AsyncIterator[tuple[ApiClient, ApiClient]]:
    """An ApiClient for each of two servers, closed at the end."""
    a, b = ApiClient(nodes[0]), ApiClient(nodes[1])
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


class ApiClient:
    """POST /api/<method> with a new TCP connection per call (so calls spread over workers)."""

    def __init__(self, handle: ServerHandle) -> None:
        self.handle = handle
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            headers={"X-API-Key": handle.api_key},
        )

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        async with self._session.post(
            f"{self.handle.api_url}/{method}",
            json=params or {},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            assert resp.status == 200, f"api {method}: HTTP {resp.status}: {text}"
            return json.loads(text)

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `result` of a call that must succeed."""
        body = await self.call(method, params)
        assert "error" not in body, f"api {method} {params}: {body}\n{self.handle.log_tail(30)}"
        return body.get("result", {})

    async def health(self) -> int:
        prefix = self.handle.config.get("health", {}).get("handler_prefix", "/health")
        async with self._session.get(
            f"{self.handle.url}{prefix}", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            await resp.read()
            return resp.status

    async def wait_health(self, status: int, streak: int = 1, timeout: float = 15.0) -> None:
        """Poll /health until `streak` answers in a row (random workers) are `status`."""
        seen = 0
        last: list[int] = []
        deadline = time.monotonic() + timeout
        while seen < streak:
            got = await self.health()
            last = (last + [got])[-20:]
            seen = seen + 1 if got == status else 0
            if time.monotonic() > deadline:
                raise AssertionError(f"/health not {status} x{streak} in {timeout}s: {last}")
            if seen < streak and got != status:
                await asyncio.sleep(0.05)  # poll interval
        return None

    async def wait_nodes(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll API `info` until `count` nodes (workers) have announced themselves, i.e.
        every worker has finished booting."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = (await self.result("info"))["nodes"]
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(nodes)} of {count} nodes after {timeout}s")
            await asyncio.sleep(0.1)  # poll interval

    async def close(self) -> None:
        await self._session.close()
