"""Raw fan-out ceiling peer: the least an aiohttp process can do to deliver what the app delivers.

It follows perf-anchors Appendix A (`e2e_worker.py`): one aiohttp process holds the WebSocket
connections; a Redis PUB/SUB reader (redis-py asyncio `PubSub.get_message`, as measured there, and/or
a bare hiredis reader on an asyncio Protocol like the app's, one per channel prefix) receives
messages that are already the finished push JSON, and for each message the peer awaits
`ws.send_frame` (or `send_str`) to every local subscriber of that channel, one frame per message.
`POST /trigger` fans out locally generated frames with no Redis at all (perf-anchors §3.3).

To take the same load-generator clients as the app, it answers the JSON protocol's `connect`
and `subscribe` commands with minimal replies (no token check) and ignores everything else.

usage: python -m bench.raw_server --port P --redis-port R [--prefix rawbench.]
                                  [--readers redispy,hiredis] [--send frame|str]
Redis channels: <prefix>py.<channel> (redis-py reader), <prefix>hi.<channel> (hiredis reader).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web

from bench.publish import channel_name, push_bytes

Subscribers = list[web.WebSocketResponse]


class RedisPyReader:
    """Appendix A's reader: redis.asyncio PubSub, SSUBSCRIBE, get_message in a loop."""

    def __init__(self, port: int, deliver: Callable[[bytes, bytes], Awaitable[None]]):
        import redis.asyncio as aredis

        self._redis = aredis.Redis(port=port)
        self._ps = self._redis.pubsub()
        self._deliver = deliver
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()

    async def subscribe(self, name: bytes) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((name, fut))
        self._wake.set()
        await fut

    async def run(self) -> None:
        ps = self._ps
        subscribed = False
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                for name, fut in batch:
                    self._waiting.setdefault(name, []).append(fut)
                await ps.ssubscribe(*{name for name, _ in batch})
                subscribed = True
            if not subscribed:
                await self._wake.wait()
                self._wake.clear()
                continue
            m = await ps.get_message(timeout=0.05)
            if m is None:
                continue
            kind = m["type"]
            if kind == "smessage":
                await self._deliver(m["channel"], m["data"])
            elif kind == "ssubscribe":
                for fut in self._waiting.pop(m["channel"], ()):
                    if not fut.done():
                        fut.set_result(None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ps.aclose()
            await self._redis.aclose()


class _HiredisProtocol(asyncio.Protocol):
    def __init__(self, owner: HiredisReader) -> None:
        import hiredis

        self._reader = hiredis.Reader()
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._owner.on_reply(reply)


class HiredisReader:
    """A bare hiredis reader on an asyncio Protocol feeding one fan-out task (no redis-py)."""

    def __init__(self, port: int, deliver: Callable[[bytes, bytes], Awaitable[None]]):
        self._port = port
        self._deliver = deliver
        self._transport: asyncio.Transport | None = None
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._connecting = asyncio.Lock()

    async def subscribe(self, name: bytes) -> None:
        async with self._connecting:  # many first subscribes arrive at once
            if self._transport is None:
                loop = asyncio.get_running_loop()
                self._transport, _ = await loop.create_connection(
                    lambda: _HiredisProtocol(self), "127.0.0.1", self._port
                )
        fut = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(fut)
        self._transport.write(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
        await fut

    def on_reply(self, reply: object) -> None:
        if type(reply) is list:
            if reply[0] == b"smessage":
                self._queue.append((reply[1], reply[2]))
                self._wake.set()
            elif reply[0] == b"ssubscribe":
                for fut in self._waiting.pop(reply[1], ()):
                    if not fut.done():
                        fut.set_result(None)

    async def run(self) -> None:
        q = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while q:
                name, data = q.popleft()
                await self._deliver(name, data)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RawPeer:
    """Subscribers by channel; one Redis reader per kind, each on its own channel prefix.

    Every channel is subscribed once per reader (`<prefix>py.<name>` by redis-py,
    `<prefix>hi.<name>` by hiredis), so the publisher picks the reader by the prefix it
    publishes to, and both can be measured against the same connections.
    """

    def __init__(self, redis_port: int, prefix: str, readers: list[str], send: str) -> None:
        self.by_name: dict[str, Subscribers] = {}
        self.by_redis: dict[bytes, Subscribers] = {}  # same list objects, keyed by Redis channel
        self.send_str = send == "str"
        self.readers: list[tuple[bytes, RedisPyReader | HiredisReader]] = []
        for kind in readers:
            cls = READERS[kind]
            self.readers.append(((prefix + PREFIXES[kind]).encode(), cls(redis_port, self.deliver)))
        self.subscribing: dict[str, asyncio.Future[None]] = {}

    async def deliver(self, redis_channel: bytes, data: bytes) -> None:
        subs = self.by_redis.get(redis_channel)
        if not subs:
            return
        if self.send_str:
            text = data.decode()
            for ws in tuple(subs):
                await ws.send_str(text)
        else:
            for ws in tuple(subs):
                await ws.send_frame(data, WSMsgType.TEXT)

    async def add(self, name: str, ws: web.WebSocketResponse) -> None:
        subs = self.by_name.get(name)
        if subs is None:
            subs = self.by_name[name] = []
            fut = asyncio.get_running_loop().create_future()
            self.subscribing[name] = fut
            try:
                for prefix, reader in self.readers:
                    self.by_redis[prefix + name.encode()] = subs
                    await reader.subscribe(prefix + name.encode())
            finally:
                fut.set_result(None)
        else:
            await self.subscribing[name]
        subs.append(ws)

    def remove(self, name: str, ws: web.WebSocketResponse) -> None:
        subs = self.by_name.get(name)
        if subs is not None and ws in subs:
            subs.remove(ws)

    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, protocols=("centrifuge-json",))
        await ws.prepare(request)
        channels: list[str] = []
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                for line in msg.data.split("\n"):
                    if not line or line == "{}":
                        continue
                    cmd = orjson.loads(line)
                    if "connect" in cmd:
                        reply = {"id": cmd["id"], "connect": {"client": "raw", "version": "raw"}}
                    elif "subscribe" in cmd:
                        name = cmd["subscribe"]["channel"]
                        await self.add(name, ws)
                        channels.append(name)
                        reply = {"id": cmd["id"], "subscribe": {}}
                    else:
                        continue
                    await ws.send_frame(orjson.dumps(reply), WSMsgType.TEXT)
        finally:
            for name in channels:
                self.remove(name, ws)
        return ws

    async def trigger(self, request: web.Request) -> web.Response:
        """Local fan-out (no Redis): frames built here, same bytes and order as via Redis."""
        req = orjson.loads(await request.read())
        base, count, start, n = req["base"], req["count"], req["start"], req["n"]
        ts, pad = req["ts"], req["pad"]
        sent = 0
        for s in range(start, start + n):
            name = channel_name(base, count, s % count)
            subs = self.by_name.get(name)
            if not subs:
                continue
            frame = push_bytes(name, s, count, ts, pad)
            for ws in tuple(subs):
                await ws.send_frame(frame, WSMsgType.TEXT)
            sent += len(subs)
        return web.json_response({"sent": sent})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"subscribers": sum(len(s) for s in self.by_name.values())})

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(reader.run()) for _, reader in self.readers]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, reader in self.readers:
            await reader.close()


READERS: dict[str, type[RedisPyReader] | type[HiredisReader]] = {
    "redispy": RedisPyReader,
    "hiredis": HiredisReader,
}
PREFIXES = {"redispy": "py.", "hiredis": "hi."}


def make_app(peer: RawPeer) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(peer.lifecycle)
    app.router.add_get("/connection/websocket", peer.ws_handler)
    app.router.add_get("/health", peer.health)
    app.router.add_post("/trigger", peer.trigger)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.raw_server", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--prefix", default="rawbench.", help="Redis channel prefix")
    ap.add_argument(
        "--readers", default="redispy,hiredis", help="Redis readers to run: redispy,hiredis"
    )
    ap.add_argument("--send", choices=("frame", "str"), default="frame")
    ap.add_argument("--uvloop", action="store_true", help="use uvloop (must be installed)")
    args = ap.parse_args(argv)
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    readers = [r for r in args.readers.split(",") if r]
    if not readers or not set(readers) <= set(READERS):
        ap.error(f"--readers: want a comma list of {', '.join(READERS)}")
    peer = RawPeer(args.redis_port, args.prefix, readers, args.send)
    web.run_app(
        make_app(peer),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
        shutdown_timeout=2.0,
    )


if __name__ == "__main__":
    main()
