"""Bidirectional emulation (HTTP-stream, SSE, POST /emulation) against a real server.

Raw aiohttp tests pin the wire format (status codes, headers, framing of every message);
centrifuge-js tests prove the official SDK works over both transports unchanged. The
module runs once per engine (memory, redis) through `server_factory`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from .helpers import RawWS, ServerHandle, run_js_async

ALLOWED_ORIGIN = "http://allowed.example"
BODY_LIMIT = 4096

CONFIG: dict[str, Any] = {
    "client": {"allowed_origins": [ALLOWED_ORIGIN]},
    "http_stream": {"enabled": True, "max_request_body_size": BODY_LIMIT},
    "sse": {"enabled": True, "max_request_body_size": BODY_LIMIT},
    "emulation": {"max_request_body_size": BODY_LIMIT},
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_presence_for_subscriber": True,
                "presence": True,
                "join_leave": True,
                "history_size": 10,
                "history_ttl": "300s",
                "allow_history_for_subscriber": True,
            }
        ]
    },
}

NO_CACHE = {
    "X-Accel-Buffering": "no",
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
}

EVENT_TIMEOUT = 5.0
# What the `ping` command (a cheap probe here) gets: protocol v2 does not support it.
NOT_AVAILABLE = {"code": 108, "message": "not available"}


def uid() -> str:
    return uuid.uuid4().hex[:10]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# a client of the emulation transports, speaking raw HTTP


class StreamEnded(Exception):
    """The server finished the streaming response."""


class EmuSession:
    """One emulated bidirectional connection: a streaming response (HTTP-stream or SSE)
    read in the background, plus commands sent by POST /emulation.

    `raw` keeps every byte of the stream for wire-format assertions; `recv()` returns
    parsed messages one at a time (pings `{}` included) and raises StreamEnded at the end.
    """

    def __init__(self, base_url: str, kind: str = "http_stream") -> None:
        assert kind in ("http_stream", "sse")
        self.base_url = base_url
        self.kind = kind
        self.raw = bytearray()
        self.events: list[bytes] = []  # SSE: the data of each event, as sent
        self.pushes: list[dict[str, Any]] = []
        self.pings = 0
        self.session = ""
        self.node = ""
        self.client = ""
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.local_port = 0
        self._http: aiohttp.ClientSession | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 1
        self.ended = asyncio.Event()

    @property
    def stream_url(self) -> str:
        return f"{self.base_url}/connection/{self.kind}"

    async def open(
        self,
        connect: Mapping[str, Any] | None = None,
        *,
        body: bytes | None = None,
        method: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> EmuSession:
        """Start the stream with `{"id":1,"connect":connect}` (or `body` as is). SSE uses
        GET + cf_connect unless method="POST". Does not wait for the connect reply."""
        if body is None:
            body = dumps({"id": self.next_id(), "connect": dict(connect or {})}).encode()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        # As centrifuge-js sends it; application/octet-stream would mean Protobuf.
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self.kind == "sse" and method != "POST":
            self._resp = await self._http.get(
                self.stream_url, params={"cf_connect": body.decode()}, headers=hdrs
            )
        else:
            self._resp = await self._http.post(self.stream_url, data=body, headers=hdrs)
        self.status = self._resp.status
        self.headers = self._resp.headers
        conn = self._resp.connection
        if conn is not None and conn.transport is not None:
            self.local_port = conn.transport.get_extra_info("sockname")[1]
        if self.status == 200:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        else:
            await self._resp.read()
            self.ended.set()
        return self

    async def connect(self, connect: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """open() and return the connect result (asserting success)."""
        await self.open(connect, **kw)
        assert self.status == 200, f"stream answered {self.status}"
        reply = await self.reply(1)
        assert "connect" in reply, reply
        res = reply["connect"]
        self.session, self.node, self.client = res["session"], res["node"], res["client"]
        return res

    async def _read(self) -> None:
        assert self._resp is not None
        data_lines: list[bytes] = []
        try:
            while True:
                line = await self._resp.content.readline()
                if not line:
                    break
                self.raw += line
                if self.kind == "http_stream":
                    if line.strip():
                        self._queue.put_nowait(json.loads(line))
                    continue
                text = line.rstrip(b"\r\n")
                if text:
                    assert text.startswith(b"data: "), f"unexpected SSE line {line!r}"
                    data_lines.append(text[len(b"data: ") :])
                elif data_lines:
                    event = b"\n".join(data_lines)
                    data_lines = []
                    self.events.append(event)
                    self._queue.put_nowait(json.loads(event))
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self._queue.put_nowait(None)
            self.ended.set()

    def next_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    async def recv(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        if self._pending:
            return self._pending.pop(0)
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._queue.put_nowait(None)  # stay ended for later calls
            raise StreamEnded
        return item

    def _record(self, obj: dict[str, Any]) -> None:
        if "push" in obj:
            self.pushes.append(obj["push"])
        elif not obj:
            self.pings += 1
        else:
            raise AssertionError(f"unexpected reply {obj!r}")

    async def reply(self, cmd_id: int, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                obj = await self.recv(timeout)
                if obj.get("id") == cmd_id:
                    return obj
                self._record(obj)

    async def push(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        async with asyncio.timeout(timeout):
            while True:
                obj = await self.recv(timeout)
                if "push" in obj:
                    return obj["push"]
                self._record(obj)

    async def wait_end(self, timeout: float = EVENT_TIMEOUT) -> list[dict[str, Any]]:
        """Everything received until the server ends the stream."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    out.append(await self.recv(timeout))
                except StreamEnded:
                    return out

    async def post(
        self,
        data: str,
        *,
        session: str | None = None,
        node: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """POST /emulation with this session's ids (or the given ones); the HTTP status."""
        body = {
            "session": self.session if session is None else session,
            "node": self.node if node is None else node,
            "data": data,
        }
        return await emulation_post(self.base_url, dumps(body).encode(), headers=headers)

    async def send(self, *commands: Mapping[str, Any]) -> int:
        """Commands (ids added when missing) in one POST; asserts 204."""
        lines = []
        for c in commands:
            cmd = dict(c)
            if "id" not in cmd:
                cmd["id"] = self.next_id()
            lines.append(dumps(cmd))
        status = await self.post("\n".join(lines))
        assert status == 204, f"emulation answered {status}"
        return status

    async def command(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        body = dict(cmd)
        if "id" not in body:
            body["id"] = self.next_id()
        await self.send(body)
        return await self.reply(body["id"])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._resp is not None:
            self._resp.close()
        if self._http is not None:
            await self._http.close()


async def emulation_post(
    base_url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
) -> int:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{base_url}/emulation", data=body, headers=hdrs) as r:
            await r.read()
            return r.status


async def http_call(
    method: str, url: str, *, data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=data, headers=dict(headers or {})) as r:
            return r.status, r.headers, await r.read()


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


@pytest.fixture
async def sessions(srv: ServerHandle) -> AsyncIterator[Any]:
    """open(kind="http_stream") -> EmuSession (not yet opened); all closed after the test."""
    made: list[EmuSession] = []

    def make(kind: str = "http_stream") -> EmuSession:
        s = EmuSession(srv.url, kind)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def node_ids(srv: ServerHandle) -> set[str]:
    info = await srv.api_async("info")
    return {n["uid"] for n in info["result"]["nodes"]}


# --------------------------------------------------------------------------------------------
# HTTP-stream


async def test_http_stream_connect_wire_format(srv: ServerHandle, sessions) -> None:
    s = sessions("http_stream")
    res = await s.connect({"token": srv.token("alice")})
    assert dict(s.headers).items() >= NO_CACHE.items()
    assert s.headers["Content-Type"].startswith("text/plain")
    assert "Access-Control-Allow-Origin" not in s.headers  # no Origin sent
    uuid.UUID(res["client"])
    uuid.UUID(res["session"])
    assert res["node"] in await node_ids(srv)
    assert res["ping"] == 25 and res["pong"] is True
    assert res["version"]
    # Exactly one JSON Reply per line, each ending with "\n".
    first = bytes(s.raw).split(b"\n")[0]
    assert json.loads(first) == {"id": 1, "connect": res}
    assert bytes(s.raw).endswith(b"\n")


async def test_http_stream_subscribe_publish_receive(srv: ServerHandle, sessions) -> None:
    ch = f"chat:hs-{uid()}"
    s = sessions("http_stream")
    await s.connect({"token": srv.token("bob")})
    sub = await s.command({"subscribe": {"channel": ch}})
    assert "subscribe" in sub and "error" not in sub
    api_res = await srv.api_async("publish", {"channel": ch, "data": {"n": 1}})
    assert "error" not in api_res
    push = await s.push()
    assert push == {"channel": ch, "pub": {"data": {"n": 1}, "offset": 1}}
    # A client publication through /emulation: reply and push both come down the stream.
    pub_id = s.next_id()
    await s.send({"id": pub_id, "publish": {"channel": ch, "data": {"n": 2}}})
    assert await s.reply(pub_id) == {"id": pub_id, "publish": {}}
    push = await s.push()
    assert push["pub"]["data"] == {"n": 2}
    assert push["pub"]["info"]["user"] == "bob"
    assert push["pub"]["info"]["client"] == s.client
    presence = await s.command({"presence": {"channel": ch}})
    assert list(presence["presence"]["presence"]) == [s.client]
    history = await s.command({"history": {"channel": ch, "limit": 10}})
    assert [p["data"] for p in history["history"]["publications"]] == [{"n": 1}, {"n": 2}]


async def test_emulation_commands_run_in_order(srv: ServerHandle, sessions) -> None:
    """Several commands in one POST, and POSTs in a row: replies keep the order."""
    ch = f"chat:order-{uid()}"
    s = sessions("http_stream")
    await s.connect({"token": srv.token("carol")})
    await s.command({"subscribe": {"channel": ch}})
    ids = [s.next_id() for _ in range(6)]
    await s.send(*({"id": i, "publish": {"channel": ch, "data": {"i": i}}} for i in ids[:3]))
    for i in ids[3:]:
        await s.send({"id": i, "publish": {"channel": ch, "data": {"i": i}}})
    seen_replies: list[int] = []
    seen_pubs: list[int] = []
    async with asyncio.timeout(EVENT_TIMEOUT):
        while len(seen_replies) < 6 or len(seen_pubs) < 6:
            obj = await s.recv()
            if "push" in obj:
                seen_pubs.append(obj["push"]["pub"]["data"]["i"])
            elif obj:
                seen_replies.append(obj["id"])
    assert seen_replies == ids
    assert seen_pubs == ids


async def test_http_stream_bad_requests(srv: ServerHandle, sessions) -> None:
    url = f"{srv.url}/connection/http_stream"
    connect = dumps({"id": 1, "connect": {"token": srv.token("dan")}}).encode()
    status, _, _ = await http_call("GET", url)
    assert status == 405
    status, _, _ = await http_call("PUT", url, data=connect)
    assert status == 405
    # Body limit: exactly max_request_body_size passes, one byte more is 413.
    padded = connect + b" " * (BODY_LIMIT - len(connect))
    assert len(padded) == BODY_LIMIT
    s = sessions("http_stream")
    res = await s.connect(body=padded)
    assert res["client"]
    status, _, _ = await http_call("POST", url, data=padded + b" ")
    assert status == 413
    # Not allowed Origin: refused before anything is read.
    status, hdrs, _ = await http_call(
        "POST", url, data=connect, headers={"Origin": "http://evil.example"}
    )
    assert status == 403
    assert "Access-Control-Allow-Origin" not in hdrs
    # An empty body is a bad request (3501) told on the stream, as Centrifugo does.
    s = sessions("http_stream")
    await s.open(body=b"")
    assert s.status == 200
    out = await s.wait_end()
    assert out == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]
    # Invalid JSON likewise.
    s = sessions("http_stream")
    await s.open(body=b"{not json")
    assert await s.wait_end() == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]


async def test_connect_error_reply_on_stream(srv: ServerHandle, sessions) -> None:
    s = sessions("http_stream")
    await s.open({"token": "not.a.jwt"})
    assert s.status == 200
    # An invalid token is a disconnect (3500) carried by a push before the stream ends.
    out = await s.wait_end()
    assert out == [{"push": {"disconnect": {"code": 3500, "reason": "invalid token"}}}]


async def test_preflight_and_cors(srv: ServerHandle, sessions) -> None:
    ask = {
        "Origin": ALLOWED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    for path, methods in (
        ("/connection/http_stream", "POST, OPTIONS"),
        ("/emulation", "POST, OPTIONS"),
        ("/connection/sse", "GET, POST, OPTIONS"),
    ):
        status, hdrs, body = await http_call("OPTIONS", srv.url + path, headers=ask)
        assert status == 204, path
        assert body == b""
        assert hdrs["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert hdrs["Access-Control-Allow-Credentials"] == "true"
        assert hdrs["Access-Control-Allow-Headers"] == "content-type"
        assert hdrs["Access-Control-Allow-Methods"] == methods
        assert hdrs["Access-Control-Max-Age"] == "300"
        # Another origin gets the 204 but no permission.
        status, hdrs, _ = await http_call(
            "OPTIONS", srv.url + path, headers={**ask, "Origin": "http://evil.example"}
        )
        assert status == 204
        assert "Access-Control-Allow-Origin" not in hdrs
        assert "Access-Control-Allow-Credentials" not in hdrs
    # Real requests from the allowed origin carry the permission too.
    origin = {"Origin": ALLOWED_ORIGIN}
    s = sessions("http_stream")
    await s.connect({"token": srv.token("erin")}, headers=origin)
    assert s.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert s.headers["Access-Control-Allow-Credentials"] == "true"
    async with aiohttp.ClientSession() as http:
        body = dumps({"session": s.session, "node": s.node, "data": dumps({"id": 2, "ping": {}})})
        async with http.post(
            f"{srv.url}/emulation",
            data=body,
            headers={**origin, "Content-Type": "application/json"},
        ) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    # The `ping` command is a cheap probe: Centrifugo answers it with 108.
    assert await s.reply(2) == {"id": 2, "error": NOT_AVAILABLE}
    status, _, _ = await emulation_post_status(srv, s, {"Origin": "http://evil.example"})
    assert status == 403


async def emulation_post_status(
    srv: ServerHandle, s: EmuSession, headers: Mapping[str, str]
) -> tuple[int, Mapping[str, str], bytes]:
    body = dumps({"session": s.session, "node": s.node, "data": dumps({"id": 99, "ping": {}})})
    return await http_call(
        "POST",
        f"{srv.url}/emulation",
        data=body.encode(),
        headers={"Content-Type": "application/json", **headers},
    )


# --------------------------------------------------------------------------------------------
# /emulation


async def test_emulation_bad_requests_disturb_nothing(srv: ServerHandle, sessions) -> None:
    ch = f"chat:emu-{uid()}"
    s = sessions("http_stream")
    await s.connect({"token": srv.token("frank")})
    await s.command({"subscribe": {"channel": ch}})
    good = {"session": s.session, "node": s.node}

    async def post(body: bytes, **kw: Any) -> int:
        return await emulation_post(srv.url, body, **kw)

    ping = dumps({"id": 50, "ping": {}})
    assert await post(b"", method="GET") == 405
    assert await post(b"{") == 400
    assert await post(b"[]") == 400
    assert await post(dumps({**good, "data": {"id": 50, "ping": {}}}).encode()) == 400
    assert await post(dumps({**good, "data": None}).encode()) == 400
    assert await post(dumps({**good, "session": 5, "data": ping}).encode()) == 400
    assert await post(dumps({**good, "node": "no-such-node", "data": ping}).encode()) == 404
    assert await post(dumps({**good, "node": "", "data": ping}).encode()) == 404
    assert await post(dumps({**good, "session": "no-such-session", "data": ping}).encode()) == 404
    oversize = dumps({**good, "data": ping + " " * BODY_LIMIT}).encode()
    assert await post(oversize) == 413
    # Nothing above reached the session: it still works and saw no stray reply.
    await srv.api_async("publish", {"channel": ch, "data": {"still": "here"}})
    assert (await s.push())["pub"]["data"] == {"still": "here"}
    pid = s.next_id()
    assert await s.command({"id": pid, "ping": {}}) == {"id": pid, "error": NOT_AVAILABLE}
    assert s.pushes == []


async def test_bad_command_closes_only_its_session(srv: ServerHandle, sessions) -> None:
    ch = f"chat:iso-{uid()}"
    a = sessions("http_stream")
    b = sessions("sse")
    await a.connect({"token": srv.token("gina")})
    await b.connect({"token": srv.token("hank")})
    await b.command({"subscribe": {"channel": ch}})
    assert await a.post("{garbage") == 204  # accepted: the session itself judges the commands
    out = await a.wait_end()
    assert out == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]
    # The closed session is gone from the node.
    assert await a.post(dumps({"id": 9, "ping": {}})) == 404
    await srv.api_async("publish", {"channel": ch, "data": {"ok": True}})
    assert (await b.push())["pub"]["data"] == {"ok": True}


async def test_server_disconnect_sends_push_and_ends_stream(srv: ServerHandle, sessions) -> None:
    user = "ivy-" + uid()
    hs = sessions("http_stream")
    sse = sessions("sse")
    await hs.connect({"token": srv.token(user)})
    await sse.connect({"token": srv.token(user)})
    res = await srv.api_async(
        "disconnect", {"user": user, "disconnect": {"code": 4501, "reason": "bye"}}
    )
    assert "error" not in res
    for s in (hs, sse):
        out = await s.wait_end()
        assert out[-1] == {"push": {"disconnect": {"code": 4501, "reason": "bye"}}}
        assert s.ended.is_set()
    assert sse.events[-1] == b'{"push":{"disconnect":{"code":4501,"reason":"bye"}}}'


async def test_peer_going_away_leaves_channel(srv: ServerHandle, sessions) -> None:
    """Closing the stream from the client side ends the session: presence and join/leave
    see it leave, and /emulation no longer knows it."""
    ch = f"chat:leave-{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.connect_cmd(srv.token("watcher"))
        await ws.command({"subscribe": {"channel": ch, "join_leave": True}})
        s = sessions("sse")
        await s.connect({"token": srv.token("leaver")})
        await s.command({"subscribe": {"channel": ch}})
        # The watcher's own join comes first (it asked for join/leave pushes).
        own = await ws.push()
        assert own["join"]["info"]["user"] == "watcher"
        join = await ws.push()
        assert join["join"]["info"]["client"] == s.client
        await s.close()
        leave = await ws.push(timeout=10)
        assert leave["leave"]["info"]["client"] == s.client
    assert await s.post(dumps({"id": 5, "ping": {}})) == 404


# --------------------------------------------------------------------------------------------
# SSE


async def test_sse_get_wire_format(srv: ServerHandle, sessions) -> None:
    ch = f"chat:sse-{uid()}"
    s = sessions("sse")
    res = await s.connect({"token": srv.token("jack")}, headers={"Origin": ALLOWED_ORIGIN})
    assert s.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert dict(s.headers).items() >= NO_CACHE.items()
    assert s.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert res["node"] in await node_ids(srv)
    # A CRLF first, then one `data:` event per Reply.
    assert bytes(s.raw).startswith(b"\r\ndata: {")
    assert json.loads(s.events[0]) == {"id": 1, "connect": res}
    # Two commands in one POST: two replies, each its own event (never two JSONs in one).
    i1, i2 = s.next_id(), s.next_id()
    await s.send(
        {"id": i1, "subscribe": {"channel": ch}},
        {"id": i2, "publish": {"channel": ch, "data": {"x": 1}}},
    )
    assert "subscribe" in await s.reply(i1)
    assert await s.reply(i2) == {"id": i2, "publish": {}}
    assert (await s.push())["pub"]["data"] == {"x": 1}
    assert all(b"\n" not in e for e in s.events)
    assert len(s.events) >= 4
    for event in s.events:
        assert f"data: {event.decode()}\n\n".encode() in bytes(s.raw)


async def test_sse_post_connect(srv: ServerHandle, sessions) -> None:
    s = sessions("sse")
    res = await s.connect({"token": srv.token("kate")}, method="POST")
    assert res["session"]
    assert s.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert await s.command({"ping": {}}) == {"id": 2, "error": NOT_AVAILABLE}
    url = f"{srv.url}/connection/sse"
    big = dumps({"id": 1, "connect": {"token": "x" * BODY_LIMIT}}).encode()
    status, _, _ = await http_call("POST", url, data=big)
    assert status == 413


async def test_sse_bad_requests(srv: ServerHandle, sessions) -> None:
    url = f"{srv.url}/connection/sse"
    status, _, body = await http_call("GET", url)
    assert (status, body) == (400, b"")
    status, _, _ = await http_call("GET", url + "?cf_connect=")
    assert status == 400
    status, _, _ = await http_call("PUT", url, data=b"{}")
    assert status == 405
    status, _, _ = await http_call(
        "GET", url + "?cf_connect=%7B%7D", headers={"Origin": "http://evil.example"}
    )
    assert status == 403
    # Malformed connect JSON: the stream opens, tells 3501 and ends.
    s = sessions("sse")
    await s.open(body=b'{"id":1,"connect":')
    assert s.status == 200
    assert await s.wait_end() == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]
    # A command that is not connect first is a bad request as well.
    s = sessions("sse")
    await s.open(body=b'{"id":1,"ping":{}}')
    assert await s.wait_end() == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]


# --------------------------------------------------------------------------------------------
# ping / pong, endpoints off


@pytest.fixture(scope="module")
def ping_srv(server_factory) -> ServerHandle:
    return server_factory(
        {
            "client": {"ping_interval": "1s", "pong_timeout": "500ms"},
            "http_stream": {"enabled": True},
        }
    )


async def test_ping_pong_over_emulation(ping_srv: ServerHandle, sessions) -> None:
    ponger = EmuSession(ping_srv.url)
    silent = EmuSession(ping_srv.url)
    try:
        res = await ponger.connect({"token": ping_srv.token("p1")})
        assert res["ping"] == 1 and res["pong"] is True
        await silent.connect({"token": ping_srv.token("p2")})
        # The ponger answers two pings with `{}` through /emulation and stays connected.
        for _ in range(2):
            assert await ponger.recv(timeout=5) == {}
            assert await ponger.post("{}") == 204
        # The silent one is closed with 3012 "no pong".
        out = await silent.wait_end(timeout=10)
        assert out == [{}, {"push": {"disconnect": {"code": 3012, "reason": "no pong"}}}]
        assert not ponger.ended.is_set()
        assert await ponger.command({"ping": {}}) == {"id": 2, "error": NOT_AVAILABLE}
    finally:
        await ponger.close()
        await silent.close()


def test_endpoints_absent_unless_enabled(server_factory) -> None:
    srv = server_factory({})
    for method, path in (
        ("POST", "/connection/http_stream"),
        ("GET", "/connection/sse?cf_connect=%7B%7D"),
        ("POST", "/emulation"),
    ):
        status, _, _ = asyncio.run(http_call(method, srv.url + path, data=b"{}"))
        assert status == 404, path


def test_custom_prefixes(server_factory) -> None:
    srv = server_factory(
        {
            "http_stream": {"enabled": True, "handler_prefix": "/hs"},
            "sse": {"enabled": True, "handler_prefix": "/events/"},
            "emulation": {"handler_prefix": "/emu"},
        }
    )

    async def run() -> None:
        s = EmuSession(srv.url)
        try:
            await s.open(
                {"token": srv.token("q")},
            )
        finally:
            await s.close()
        assert s.status == 404  # the default path is not served
        for method, path in (("POST", "/hs"), ("GET", "/events"), ("POST", "/emu")):
            status, _, _ = await http_call("OPTIONS", srv.url + path)
            assert status == 204, (method, path)

    asyncio.run(run())


# --------------------------------------------------------------------------------------------
# centrifuge-js


async def js(srv: ServerHandle, script: str, **env: str) -> dict[str, Any]:
    return await run_js_async(script, srv.js_env(CF_BASE=srv.url, **env), timeout=20.0)


JS_SCENARIO = """
const base = env.CF_BASE;
const opts = {
  token: token(env.USER),
  emulationEndpoint: base + '/emulation',
};
if (env.KIND === 'sse') {
  const { EventSource } = await import('eventsource');
  opts.eventsource = EventSource;
}
const c = new Centrifuge([{ transport: env.KIND, endpoint: base + '/connection/' + env.KIND }], opts);
const sub = c.newSubscription(env.CH);
const subPubs = collect(sub, 'publication');
sub.subscribe();
c.connect();
const connected = await waitEvent(c, 'connected', 10000);
await sub.ready(10000);
const fromApi = await api('publish', { channel: env.CH, data: { from: 'api' } });
await waitUntil(sub, 'publication', () => subPubs.length >= 1, 5000, 'api publication');
const published = await sub.publish({ from: 'client' });
await waitUntil(sub, 'publication', () => subPubs.length >= 2, 5000, 'client publication');
const presence = await sub.presence();
const history = await sub.history({ limit: 10 });
const rpcErr = await expectError(c.rpc('nothing', {}));
// A server-side disconnect with a reconnect code: the SDK comes back over the same transport.
const disconnected = collect(c, 'disconnected');
const connecting = waitEvent(c, 'connecting', 10000);
await api('disconnect', { user: env.USER, disconnect: { code: 4000, reason: 'come back' } });
const reconnecting = await connecting;
const again = await waitEvent(c, 'connected', 10000);
await sub.ready(10000);
await api('publish', { channel: env.CH, data: { from: 'api-2' } });
await waitUntil(sub, 'publication', () => subPubs.length >= 3, 5000, 'publication after reconnect');
const disconnectedBefore = disconnected.length;
c.disconnect();
return {
  transport: connected.transport,
  client: connected.client,
  again: again.transport,
  reconnecting: { code: reconnecting.code, reason: reconnecting.reason },
  disconnected: disconnectedBefore,
  fromApi,
  published,
  pubs: subPubs.map((p) => ({ data: p.data, user: p.info ? p.info.user : null })),
  presence: Object.values(presence.clients).map((ci) => ci.user),
  history: history.publications.map((p) => p.data),
  rpcErr,
};
"""


@pytest.mark.usefixtures("node_js")
@pytest.mark.parametrize("kind", ["http_stream", "sse"])
async def test_centrifuge_js(srv: ServerHandle, kind: str) -> None:
    user = f"js-{kind}-{uid()}"
    out = await js(srv, JS_SCENARIO, KIND=kind, USER=user, CH=f"chat:js-{uid()}")
    assert out["transport"] == kind
    assert out["again"] == kind
    assert out["reconnecting"] == {"code": 4000, "reason": "come back"}
    assert out["disconnected"] == 0
    assert out["published"] == {}
    assert out["pubs"] == [
        {"data": {"from": "api"}, "user": None},
        {"data": {"from": "client"}, "user": user},
        {"data": {"from": "api-2"}, "user": None},
    ]
    assert out["presence"] == [user]
    assert out["history"] == [{"from": "api"}, {"from": "client"}]
    assert out["rpcErr"]["code"] == 108  # no RPC proxy: not available
    uuid.UUID(out["client"])


# --------------------------------------------------------------------------------------------
# Protobuf (HTTP-stream only; SSE is JSON only)


def _delimited(msg: Any) -> bytes:
    body = msg.SerializeToString()
    n = len(body)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out) + body


def _split_delimited(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete varint-prefixed messages in `buf`, and the incomplete rest."""
    out: list[bytes] = []
    pos = 0
    while pos < len(buf):
        n = shift = 0
        p = pos
        while p < len(buf):
            b = buf[p]
            p += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            break  # varint incomplete
        if p + n > len(buf):
            break
        out.append(buf[p : p + n])
        pos = p + n
    return out, buf[pos:]


async def test_http_stream_protobuf(srv: ServerHandle) -> None:
    # The SDK's own generated classes: an encoder independent of the server's.
    from centrifuge.protocol import client_pb2 as pb

    ch = f"chat:pb-{uid()}"
    octet = {"Content-Type": "application/octet-stream"}
    connect = _delimited(pb.Command(id=1, connect=pb.ConnectRequest(token=srv.token("pat"))))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{srv.url}/connection/http_stream", data=connect, headers=octet
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert dict(resp.headers).items() >= NO_CACHE.items()
            raw = bytearray()
            replies: asyncio.Queue[Any] = asyncio.Queue()

            async def read() -> None:
                rest = b""
                async for chunk in resp.content.iter_any():
                    raw.extend(chunk)
                    msgs, rest = _split_delimited(rest + chunk)
                    for m in msgs:
                        replies.put_nowait(pb.Reply.FromString(m))

            reader = asyncio.get_running_loop().create_task(read())
            try:

                async def next_reply() -> Any:
                    return await asyncio.wait_for(replies.get(), EVENT_TIMEOUT)

                first = await next_reply()
                assert first.id == 1
                session, node = first.connect.session, first.connect.node
                assert session and node in await node_ids(srv)
                assert first.connect.client and first.connect.pong
                # Two Protobuf commands in one Protobuf EmulationRequest.
                data = _delimited(
                    pb.Command(id=2, subscribe=pb.SubscribeRequest(channel=ch))
                ) + _delimited(
                    pb.Command(id=3, publish=pb.PublishRequest(channel=ch, data=b'{"p":1}'))
                )
                req = pb.EmulationRequest(node=node, session=session, data=data)
                status = await emulation_post(srv.url, req.SerializeToString(), headers=octet)
                assert status == 204
                got = [await next_reply() for _ in range(3)]
                # The publication push may overtake the publish reply.
                by_id = {r.id: r for r in got}
                sub, pub_reply, push = by_id[2], by_id[3], by_id[0]
                assert sub.HasField("subscribe") and pub_reply.HasField("publish")
                assert push.push.channel == ch
                assert push.push.pub.data == b'{"p":1}'
                assert push.push.pub.info.user == "pat"
                # A binary publication reaches a Protobuf client byte for byte.
                res = await srv.api_async("publish", {"channel": ch, "b64data": "AAEC/w=="})
                assert "error" not in res
                push = await next_reply()
                assert push.push.pub.data == b"\x00\x01\x02\xff"
                # Garbage where an EmulationRequest should be: 400, the session unharmed.
                assert await emulation_post(srv.url, b"\xff\xff\xff", headers=octet) == 400
                probe = pb.EmulationRequest(
                    node=node,
                    session=session,
                    data=_delimited(pb.Command(id=4, ping=pb.PingRequest())),
                )
                status = await emulation_post(srv.url, probe.SerializeToString(), headers=octet)
                assert status == 204
                reply = await next_reply()
                assert reply.id == 4 and reply.error.code == 108
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
    # Every byte of the stream was a complete length-prefixed Reply.
    msgs, rest = _split_delimited(bytes(raw))
    assert rest == b"" and len(msgs) >= 6


JS_PROTOBUF = """
const base = env.CF_BASE;
const c = new Centrifuge([{ transport: 'http_stream', endpoint: base + '/connection/http_stream' }], {
  token: token(env.USER),
  emulationEndpoint: base + '/emulation',
});
const sub = c.newSubscription(env.CH);
const pubs = collect(sub, 'publication');
sub.subscribe();
c.connect();
const connected = await waitEvent(c, 'connected', 10000);
await sub.ready(10000);
await sub.publish(new Uint8Array([0, 1, 2, 255]));
await api('publish', { channel: env.CH, data: { from: 'api' } });
await waitUntil(sub, 'publication', () => pubs.length >= 2, 5000, 'publications');
const presence = await sub.presence();
return {
  transport: connected.transport,
  first: Array.from(pubs[0].data),
  firstUser: pubs[0].info ? pubs[0].info.user : null,
  second: JSON.parse(new TextDecoder().decode(pubs[1].data)),
  presence: Object.values(presence.clients).map((ci) => ci.user),
};
"""


@pytest.mark.usefixtures("node_js")
async def test_centrifuge_js_protobuf_http_stream(srv: ServerHandle) -> None:
    user = f"jspb-{uid()}"
    out = await js(srv, JS_PROTOBUF, USER=user, CH=f"chat:jspb-{uid()}", CF_PROTOBUF="1")
    assert out["transport"] == "http_stream"
    assert out["first"] == [0, 1, 2, 255]
    assert out["firstUser"] == user
    assert out["second"] == {"from": "api"}
    assert out["presence"] == [user]


# --------------------------------------------------------------------------------------------
# node limits and shutdown


async def test_connection_limit_and_shutdown(fresh_server_factory) -> None:
    srv = fresh_server_factory(
        {
            "client": {"connection_limit": 1},
            "http_stream": {"enabled": True},
            "sse": {"enabled": True},
        }
    )
    first = EmuSession(srv.url, "sse")
    extra = EmuSession(srv.url, "http_stream")
    try:
        await first.connect({"token": srv.token("only")})
        # The node is full: the next stream is refused before it starts, like a WebSocket.
        await extra.open({"token": srv.token("more")})
        assert extra.status == 503
        # Shutdown: the stream is told 3001 and ends, so the SDK reconnects elsewhere.
        srv.proc.terminate()
        out = await first.wait_end(timeout=10)
        assert out[-1] == {"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}}
    finally:
        await first.close()
        await extra.close()
