"""Bidirectional emulation across gunicorn workers (Redis engine, 2 workers).

The stream of a session lives on one worker; its POST /emulation requests land on
whichever worker accepts their TCP connection. Here the test picks the worker: it opens
keep-alive connections until one is held by the other worker (psutil tells which process
owns the server end), checks through that very connection that this worker knows the
stream's node, then posts the commands over it. Replies must still come down the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from .helpers import ServerHandle, run_js_async
from .redis_e2e_helpers import RedisProcess, redis_config, worker_of, worker_pids
from .test_emulation import EmuSession, dumps, uid

WORKERS = 2
CONNECT_TRIES = 60


def emulation_config(port: int, **extra: Any) -> dict[str, Any]:
    return redis_config(
        port,
        http_stream={"enabled": True},
        sse={"enabled": True},
        channel={
            "namespaces": [
                {
                    "name": "rec",
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": True,
                    "presence": True,
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_subscriber": True,
                    "allow_presence_for_subscriber": True,
                }
            ]
        },
        **extra,
    )


@pytest.fixture(scope="module")
def srv(server_factory, redis_server: RedisProcess) -> ServerHandle:
    return server_factory(emulation_config(redis_server.port), workers=WORKERS)


@pytest.fixture(scope="module")
def ping_srv(server_factory, redis_server: RedisProcess) -> ServerHandle:
    """Pings every 2 s, pong due within 1 s: clients must pong through /emulation."""
    client = {"ping_interval": "2s", "pong_timeout": "1s"}
    return server_factory(emulation_config(redis_server.port, client=client), workers=WORKERS)


class KeepAlive:
    """One HTTP/1.1 keep-alive connection spoken by hand, so that every request on it
    reaches the same worker (aiohttp's client pool would not promise that)."""

    def __init__(self, srv: ServerHandle) -> None:
        self.srv = srv
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.local_port = 0

    async def open(self) -> KeepAlive:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.srv.port)
        self.local_port = self.writer.get_extra_info("sockname")[1]
        return self

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.srv.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        async with asyncio.timeout(10):
            status_line = await self.reader.readline()
            assert status_line.startswith(b"HTTP/1.1 "), status_line
            status = int(status_line.split()[1])
            length = 0
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                assert name.strip().lower() != "transfer-encoding", "chunked answer"
            data = await self.reader.readexactly(length) if length else b""
        return status, data

    async def info_node_ids(self) -> set[str]:
        status, data = await self.request("POST", "/api/info", b"{}", self._api_headers())
        assert status == 200, data
        return {n["uid"] for n in json.loads(data)["result"]["nodes"]}

    def _api_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.srv.api_key, "Content-Type": "application/json"}

    async def emulate(self, s: EmuSession, *commands: Mapping[str, Any], **over: str) -> int:
        body = {
            "session": s.session,
            "node": s.node,
            "data": "\n".join(dumps(c) for c in commands),
            **over,
        }
        status, _ = await self.request(
            "POST", "/emulation", dumps(body).encode(), {"Content-Type": "application/json"}
        )
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    items: list[Any] = []
    yield items
    for item in items:
        await item.close()


async def worker_of_conn(srv: ServerHandle, conn: KeepAlive) -> int:
    # A request answered on the connection proves a worker accepted it.
    status, _ = await conn.request("GET", "/health")
    assert status == 200
    pid = worker_of(srv, conn.local_port)
    assert pid is not None, "keep-alive connection not found on any worker"
    return pid


async def conn_on(srv: ServerHandle, pid: int, closing: list[Any]) -> KeepAlive:
    """A keep-alive connection held by worker `pid`."""
    for _ in range(CONNECT_TRIES):
        conn = await KeepAlive(srv).open()
        if await worker_of_conn(srv, conn) == pid:
            closing.append(conn)
            return conn
        await conn.close()
    raise AssertionError(f"no connection reached worker {pid} in {CONNECT_TRIES} tries")


async def streams_on_every_worker(
    srv: ServerHandle, kind: str, closing: list[Any]
) -> dict[int, EmuSession]:
    """One connected emulation session per worker, keyed by the worker's pid."""
    by_worker: dict[int, EmuSession] = {}
    for i in range(CONNECT_TRIES):
        s = EmuSession(srv.url, kind)
        closing.append(s)
        await s.connect({"token": srv.token(f"{kind}-{i}")})
        pid = worker_of(srv, s.local_port)
        assert pid is not None, "stream not found on any worker"
        if pid not in by_worker:
            by_worker[pid] = s
            if len(by_worker) == WORKERS:
                return by_worker
    raise AssertionError(f"streams never covered all workers: {list(by_worker)}")


async def wait_knows(conn: KeepAlive, node_id: str, timeout: float = 10.0) -> None:
    """Until the worker behind `conn` has heard of `node_id` (peers announce themselves)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        known = await conn.info_node_ids()
        if node_id in known:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{node_id} not in {known}"
        await asyncio.sleep(0.1)  # poll interval: membership has no event to await


@pytest.mark.parametrize("kind", ["http_stream", "sse"])
async def test_commands_cross_workers(srv: ServerHandle, kind: str, closing: list[Any]) -> None:
    pids = worker_pids(srv)
    assert len(pids) == WORKERS
    streams = await streams_on_every_worker(srv, kind, closing)
    # Each stream's node id is its worker's: two workers, two distinct nodes.
    assert len({s.node for s in streams.values()}) == WORKERS
    for stream_pid, s in streams.items():
        other = next(p for p in pids if p != stream_pid)
        conn = await conn_on(srv, other, closing)
        assert worker_of(srv, conn.local_port) != worker_of(srv, s.local_port)
        await wait_knows(conn, s.node)
        ch = f"rec:cross-{uid()}"
        sub_id, pub_id = s.next_id(), s.next_id()
        assert await conn.emulate(s, {"id": sub_id, "subscribe": {"channel": ch}}) == 204
        sub = await s.reply(sub_id)
        assert sub["subscribe"]["recoverable"] is True  # force_recovery in namespace rec
        assert (
            await conn.emulate(s, {"id": pub_id, "publish": {"channel": ch, "data": {"k": kind}}})
            == 204
        )
        assert await s.reply(pub_id) == {"id": pub_id, "publish": {}}
        push = await s.push()
        assert push["channel"] == ch
        assert push["pub"]["data"] == {"k": kind}
        assert push["pub"]["offset"] == 1
        # A node nobody knows is refused on the spot; a session of another node cannot be
        # checked from here and is accepted (Centrifugo does the same).
        assert await conn.emulate(s, {"id": 99, "ping": {}}, node="no-such-node") == 404
        assert await conn.emulate(s, {"id": 99, "ping": {}}, session="no-such-session") == 204
        # Commands from both workers interleave on one session in arrival order.
        here = await conn_on(srv, stream_pid, closing)
        ids = [s.next_id() for _ in range(4)]
        for i, cmd_id in enumerate(ids):
            via = conn if i % 2 == 0 else here
            cmd = {"id": cmd_id, "presence_stats": {"channel": ch}}
            assert await via.emulate(s, cmd) == 204
            reply = await s.reply(cmd_id)
            assert reply["presence_stats"] == {"num_clients": 1, "num_users": 1}


async def test_pongs_through_other_worker_keep_session(
    ping_srv: ServerHandle, closing: list[Any]
) -> None:
    """The server's pings are answered by /emulation on the other worker; the session
    stays up. A pong nobody asked for, sent there, closes it with 3501 on its own worker."""
    srv = ping_srv
    streams = await streams_on_every_worker(srv, "http_stream", closing)
    pids = list(streams)
    s = streams[pids[0]]
    for other in streams.values():
        if other is not s:
            await other.close()  # it would not pong
    conn = await conn_on(srv, pids[1], closing)
    await wait_knows(conn, s.node)
    for _ in range(2):
        assert await s.recv(timeout=5) == {}  # the ping
        assert await conn.emulate(s, {}) == 204  # the pong, via the other worker
    assert await conn.emulate(s, {"id": 7, "ping": {}}) == 204
    reply = await s.reply(7)  # still connected
    assert reply["error"]["code"] == 108
    assert await conn.emulate(s, {}) == 204  # no ping pending: a bad request
    out = await s.wait_end()
    assert out[-1] == {"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}


async def test_bad_command_via_other_worker_closes_session(
    srv: ServerHandle, closing: list[Any]
) -> None:
    streams = await streams_on_every_worker(srv, "sse", closing)
    pids = list(streams)
    s, bystander = streams[pids[0]], streams[pids[1]]
    conn = await conn_on(srv, pids[1], closing)
    await wait_knows(conn, s.node)
    status, _ = await conn.request(
        "POST",
        "/emulation",
        dumps({"session": s.session, "node": s.node, "data": "{broken"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 204
    out = await s.wait_end()
    assert out == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]
    # The worker that relayed the bad command, and its own session, are fine.
    assert await conn.emulate(bystander, {"id": 3, "ping": {}}) == 204
    assert (await bystander.reply(3))["error"]["code"] == 108


JS_MANY = """
const { EventSource } = await import('eventsource');
const base = env.CF_BASE;
const clients = [];
for (let i = 0; i < Number(env.N); i++) {
  for (const kind of ['http_stream', 'sse']) {
    const c = new Centrifuge([{ transport: kind, endpoint: base + '/connection/' + kind }], {
      token: token(`${kind}-${i}`),
      emulationEndpoint: base + '/emulation',
      eventsource: EventSource,
    });
    const sub = c.newSubscription(env.CH);
    const pubs = collect(sub, 'publication');
    sub.subscribe();
    c.connect();
    clients.push({ c, sub, pubs, kind });
  }
}
for (const { c, sub } of clients) {
  await c.ready(10000);
  await sub.ready(10000);
}
const drops = [];
for (const { c, kind } of clients) {
  c.on('disconnected', (ctx) => drops.push({ kind, code: ctx.code, reason: ctx.reason }));
  c.on('connecting', (ctx) => drops.push({ kind, code: ctx.code, reason: ctx.reason }));
}
// Publish in rounds for a while, so that every client answers a few server pings
// (sent every 2 s) through /emulation, which lands on either worker.
const until = Date.now() + Number(env.DURATION_MS);
let rounds = 0;
while (Date.now() < until || rounds === 0) {
  for (const [i, { sub }] of clients.entries()) {
    await sub.publish({ i, round: rounds });
  }
  rounds++;
  const want = rounds * clients.length;
  for (const { sub, pubs } of clients) {
    await waitUntil(sub, 'publication', () => pubs.length >= want, 10000, 'publications');
  }
}
const info = await api('info', {});
return {
  kinds: clients.map(({ kind }) => kind),
  rounds,
  received: clients.map(({ pubs }) => pubs.length),
  firstRound: clients.map(({ pubs }) =>
    pubs.filter((p) => p.data.round === 0).map((p) => p.data.i).sort((a, b) => a - b)),
  drops,
  nodes: info.result.nodes.length,
};
"""


@pytest.mark.usefixtures("node_js")
async def test_centrifuge_js_many_clients_two_workers(ping_srv: ServerHandle) -> None:
    """SDK clients of both kinds on a 2-worker server: each publishes through /emulation
    (to whichever worker), each receives every publication, and their pongs keep them
    connected for several ping periods."""
    n = 3
    env = ping_srv.js_env(CF_BASE=ping_srv.url, N=str(n), CH=f"rec:js-{uid()}", DURATION_MS="5000")
    out = await run_js_async(JS_MANY, env, timeout=40)
    total = 2 * n
    assert sorted(out["kinds"]) == ["http_stream"] * n + ["sse"] * n
    assert out["rounds"] >= 1
    assert out["received"] == [out["rounds"] * total] * total
    assert out["firstRound"] == [list(range(total))] * total
    assert out["drops"] == []  # no 3012 "no pong", no reconnect
    assert out["nodes"] == WORKERS
