"""Protobuf client protocol over WebSocket against a real server process.

Three kinds of client: centrifuge-python with `use_protobuf=True`, the Protobuf build of
centrifuge-js (tests/e2e/js/run.mjs with CF_PROTOBUF=1), and a raw aiohttp WebSocket that
speaks varint-delimited Commands/Replies built with the generated classes, for negotiation,
framing and bad input. Every expectation is an awaited event or reply, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from cent import AsyncClient, Disconnect, DisconnectRequest, PublishRequest
from centrifuge import (
    Client,
    ClientState,
    ReplyError,
    StreamPosition,
    Subscription,
)
from google.protobuf.internal.decoder import _DecodeVarint

from app import VERSION_STRING
from app.protocol.gen import client_pb2 as pb
from tests.support.sdk import ClientEvents, SubEvents

from .helpers import RawWS, ServerHandle, node_available, run_js_async

SIZE_LIMIT = 4096

CHAT = {
    "name": "chat",
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
    "presence": True,
    "join_leave": True,
    "allow_presence_for_subscriber": True,
    "history_size": 100,
    "history_ttl": "300s",
    "allow_history_for_subscriber": True,
    "force_recovery": True,
}

CONFIG = {
    "websocket": {"message_size_limit": SIZE_LIMIT},
    "channel": {"namespaces": [CHAT]},
}

PING_INTERVAL = 2
PING_CONFIG = {
    **CONFIG,
    "client": {"ping_interval": f"{PING_INTERVAL}s", "pong_timeout": "1s"},
}

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


@pytest.fixture(scope="module")
def ping_srv(server_factory) -> ServerHandle:
    return server_factory(PING_CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


# --------------------------------------------------------------------------------------------
# raw Protobuf WebSocket


def delimited(*messages: Any) -> bytes:
    out = b""
    for m in messages:
        body = m if isinstance(m, bytes) else m.SerializeToString()
        n = len(body)
        prefix = bytearray()
        while n >= 0x80:
            prefix.append((n & 0x7F) | 0x80)
            n >>= 7
        prefix.append(n)
        out += bytes(prefix) + body
    return out


class PbClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class PbWS:
    """A raw `centrifuge-protobuf` connection: binary frames of varint-delimited messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._pending: list[pb.Reply] = []
        self._next_id = 1
        self.pushes: list[pb.Push] = []
        self.pings = 0
        self.frame_types: set[aiohttp.WSMsgType] = set()

    async def send(self, *commands: pb.Command) -> None:
        await self.ws.send_bytes(delimited(*commands))

    async def recv(self, timeout: float = TIMEOUT) -> pb.Reply:
        while not self._pending:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                self.frame_types.add(msg.type)
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                pos = 0
                while pos < len(data):
                    n, pos = _DecodeVarint(data, pos)
                    self._pending.append(pb.Reply.FromString(data[pos : pos + n]))
                    pos += n
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                raise PbClosed(msg.data, msg.extra or "")
            else:
                raise PbClosed(self.ws.close_code, f"{msg.type}: {msg.data!r}")
        return self._pending.pop(0)

    async def reply(self, cmd_id: int, timeout: float = TIMEOUT) -> pb.Reply:
        while True:
            r = await self.recv(timeout)
            if r.id == cmd_id:
                return r
            self._record(r)

    async def push(self, timeout: float = TIMEOUT) -> pb.Push:
        if self.pushes:
            return self.pushes.pop(0)
        while True:
            r = await self.recv(timeout)
            if r.HasField("push"):
                return r.push
            self._record(r)

    def _record(self, r: pb.Reply) -> None:
        if r.HasField("push"):
            self.pushes.append(r.push)
        elif r == pb.Reply():
            self.pings += 1
        else:
            raise AssertionError(f"unexpected reply {r}")

    async def call(self, **request: Any) -> pb.Reply:
        cmd_id = self._next_id
        self._next_id += 1
        await self.send(pb.Command(id=cmd_id, **request))
        return await self.reply(cmd_id)

    async def ok(self, **request: Any) -> Any:
        (method,) = request
        r = await self.call(**request)
        assert not r.HasField("error"), r.error
        assert r.HasField(method), r
        return getattr(r, method)

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        try:
            while True:
                self._pending.clear()
                await self.recv(timeout)
        except PbClosed as e:
            return e.code, e.reason


@asynccontextmanager
async def pb_ws(
    srv: ServerHandle,
    *,
    token: str | None = None,
    protocols: tuple[str, ...] = ("centrifuge-protobuf",),
    query: str = "",
) -> AsyncIterator[PbWS]:
    """A Protobuf connection; connected with `token` unless token is None."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            srv.ws_url + query, protocols=protocols, max_msg_size=0, autoping=True
        ) as ws,
    ):
        c = PbWS(ws)
        c.negotiated = ws.protocol  # type: ignore[attr-defined]
        if token is not None:
            c.connect_result = await c.ok(connect=pb.ConnectRequest(token=token))  # type: ignore[attr-defined]
        yield c


@asynccontextmanager
async def json_ws(srv: ServerHandle, token: str) -> AsyncIterator[RawWS]:
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await ws.connect_cmd(token)
        assert "connect" in rep, rep
        yield ws


async def test_negotiated_subprotocol_and_binary_frames(srv: ServerHandle) -> None:
    async with pb_ws(srv, token=srv.token("neg-" + uid())) as c:
        assert c.negotiated == "centrifuge-protobuf"
        res = c.connect_result
        uuid.UUID(res.client)
        assert res.version == VERSION_STRING
        assert (res.ping, res.pong) == (25, True)
        assert c.frame_types == {aiohttp.WSMsgType.BINARY}


@pytest.mark.parametrize("query", ["?format=protobuf", "?cf_protocol=protobuf"])
async def test_protobuf_selected_by_query(srv: ServerHandle, query: str) -> None:
    async with pb_ws(srv, token=srv.token("q-" + uid()), protocols=(), query=query) as c:
        assert c.negotiated is None
        assert c.connect_result.version == VERSION_STRING
        assert c.frame_types == {aiohttp.WSMsgType.BINARY}


async def test_json_preferred_when_both_offered(srv: ServerHandle) -> None:
    async with RawWS.connect(
        srv.ws_url, protocols=("centrifuge-protobuf", "centrifuge-json")
    ) as ws:
        assert ws.ws.protocol == "centrifuge-json"
        rep = await ws.connect_cmd(srv.token("both-" + uid()))
        assert rep["connect"]["version"] == VERSION_STRING


async def test_several_commands_in_one_frame(srv: ServerHandle) -> None:
    ch = f"chat:multi-{uid()}"
    async with pb_ws(srv) as c:
        await c.send(
            pb.Command(id=1, connect=pb.ConnectRequest(token=srv.token("multi"))),
            pb.Command(id=2, subscribe=pb.SubscribeRequest(channel=ch)),
            pb.Command(id=3, publish=pb.PublishRequest(channel=ch, data=b'{"n":1}')),
            pb.Command(id=4, history=pb.HistoryRequest(channel=ch, limit=10)),
        )
        replies = [await c.recv() for _ in range(4)]
        replies += [await c.recv()]  # the publication push
        by_id = {r.id: r for r in replies if r.id}
        assert sorted(by_id) == [1, 2, 3, 4]
        assert by_id[2].subscribe.recoverable and by_id[2].subscribe.positioned
        assert by_id[3] == pb.Reply(id=3, publish=pb.PublishResult())
        assert by_id[3].HasField("publish")
        hist = by_id[4].history
        assert [(p.data, p.offset) for p in hist.publications] == [(b'{"n":1}', 1)]
        (push,) = [r.push for r in replies if r.HasField("push")]
        assert (push.channel, push.pub.data, push.pub.offset) == (ch, b'{"n":1}', 1)
        assert push.pub.info.user == "multi"


async def test_json_and_protobuf_subscribers_both_receive(srv: ServerHandle) -> None:
    ch = f"chat:mixed-{uid()}"
    async with (
        pb_ws(srv, token=srv.token("p", info={"k": 1})) as p,
        json_ws(srv, srv.token("j")) as j,
    ):
        await p.ok(subscribe=pb.SubscribeRequest(channel=ch))
        assert (await j.command({"subscribe": {"channel": ch}}))["subscribe"]["recoverable"]
        res = await srv.api_async(
            "publish", {"channel": ch, "data": {"text": "hi"}, "tags": {"t": "1"}}
        )
        assert res["result"]["offset"] == 1
        ppub = (await p.push()).pub
        jpub = (await j.push())["pub"]
        assert json.loads(ppub.data) == jpub["data"] == {"text": "hi"}
        assert ppub.offset == jpub["offset"] == 1
        assert dict(ppub.tags) == jpub["tags"] == {"t": "1"}

        # Published by the Protobuf client: the JSON client sees JSON, with ClientInfo.
        await p.ok(publish=pb.PublishRequest(channel=ch, data=b'{"from":"pb"}'))
        jpub = (await j.push())["pub"]
        assert (jpub["data"], jpub["offset"]) == ({"from": "pb"}, 2)
        assert jpub["info"]["conn_info"] == {"k": 1}
        ppub = (await p.push()).pub
        assert (ppub.data, ppub.offset, json.loads(ppub.info.conn_info)) == (
            b'{"from":"pb"}',
            2,
            {"k": 1},
        )


async def test_binary_publication_reaches_protobuf_but_not_json(srv: ServerHandle) -> None:
    ch = f"chat:bin-{uid()}"
    payload = bytes(range(256))
    async with pb_ws(srv, token=srv.token("pbin")) as p, json_ws(srv, srv.token("jbin")) as j:
        await p.ok(subscribe=pb.SubscribeRequest(channel=ch))
        await j.command({"subscribe": {"channel": ch}})
        b64 = base64.b64encode(payload).decode()
        await srv.api_async("publish", {"channel": ch, "b64data": b64})
        pub = (await p.push()).pub
        assert (pub.data, pub.offset) == (payload, 1)
        code, _ = await j.wait_closed()
        assert code == 3506  # inappropriate protocol
        # History keeps the bytes too.
        hist = await p.ok(history=pb.HistoryRequest(channel=ch, limit=-1))
        assert [p.data for p in hist.publications] == [payload]


async def test_api_disconnect_uses_close_frame(srv: ServerHandle) -> None:
    user = "kick-" + uid()
    async with pb_ws(srv, token=srv.token(user)) as c:
        await srv.api_async(
            "disconnect", {"user": user, "disconnect": {"code": 4501, "reason": "go away"}}
        )
        assert await c.closed() == (4501, "go away")
        assert c.pushes == []  # no disconnect push on a bidirectional WebSocket


# --------------------------------------------------------------------------------------------
# bad input


def _valid(cmd_id: int = 9) -> bytes:
    return delimited(pb.Command(id=cmd_id, presence_stats=pb.PresenceStatsRequest(channel="x")))


BAD_FRAMES = {
    "truncated-varint": b"\x80",
    "truncated-varint-after-command": _valid() + b"\xff",
    "varint-too-long": b"\xff" * 11,
    "length-beyond-frame": b"\x20\x08\x01",
    "garbage": b"\x05\xff\xff\xff\xff\xff",
    "empty-frame": b"",
}


async def _undisturbed(srv: ServerHandle, watcher: PbWS, ch: str, n: int) -> None:
    """The watcher still gets publications and answers commands."""
    await srv.api_async("publish", {"channel": ch, "data": {"n": n}})
    pub = (await watcher.push()).pub
    assert (json.loads(pub.data), pub.offset) == ({"n": n}, n)
    stats = await watcher.ok(presence_stats=pb.PresenceStatsRequest(channel=ch))
    assert stats.num_clients == 1


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_bad_frames_close_3501(srv: ServerHandle, name: str) -> None:
    ch = f"chat:bad-{uid()}"
    async with pb_ws(srv, token=srv.token("watcher")) as watcher:
        await watcher.ok(subscribe=pb.SubscribeRequest(channel=ch))
        async with pb_ws(srv, token=srv.token("bad")) as bad:
            await bad.ws.send_bytes(BAD_FRAMES[name])
            code, reason = await bad.closed()
            assert (code, reason) == (3501, "bad request")
        await _undisturbed(srv, watcher, ch, 1)


async def test_json_text_frame_on_protobuf_connection_closes_3501(srv: ServerHandle) -> None:
    # Centrifugo decodes a connection's frames with its protocol whatever the frame type.
    async with pb_ws(srv) as c:
        await c.ws.send_str('{"id":1,"connect":{}}')
        assert await c.closed() == (3501, "bad request")


async def test_bad_frame_before_connect_closes_3501(srv: ServerHandle) -> None:
    async with pb_ws(srv) as c:
        await c.ws.send_bytes(b"\x02\xff\xff")
        assert (await c.closed())[0] == 3501


async def test_oversize_message_closes_only_that_connection(srv: ServerHandle) -> None:
    ch = f"chat:big-{uid()}"
    async with pb_ws(srv, token=srv.token("watcher")) as watcher:
        await watcher.ok(subscribe=pb.SubscribeRequest(channel=ch))
        async with pb_ws(srv, token=srv.token("big")) as big:
            data = b'"' + b"x" * SIZE_LIMIT + b'"'
            await big.send(pb.Command(id=5, publish=pb.PublishRequest(channel=ch, data=data)))
            code, _ = await big.closed()
            assert code == 1009  # message too big, as gorilla/websocket's read limit
        # Nothing was published; the next publication is offset 1.
        await _undisturbed(srv, watcher, ch, 1)
    # A frame of exactly the limit is accepted (gorilla rejects only length > limit).
    async with pb_ws(srv, token=srv.token("edge")) as edge:
        pad = SIZE_LIMIT
        while True:
            req = pb.PublishRequest(channel=ch, data=b'"' + b"y" * pad + b'"')
            if len(delimited(pb.Command(id=2, publish=req))) <= SIZE_LIMIT:
                break
            pad -= 1
        assert len(delimited(pb.Command(id=2, publish=req))) == SIZE_LIMIT
        await edge.send(pb.Command(id=2, publish=req))
        assert (await edge.reply(2)).HasField("publish")


# --------------------------------------------------------------------------------------------
# ping / pong


async def test_raw_ping_is_empty_reply_and_pong_keeps_connection(ping_srv: ServerHandle) -> None:
    async with pb_ws(ping_srv, token=ping_srv.token("pinger")) as c:
        assert (c.connect_result.ping, c.connect_result.pong) == (PING_INTERVAL, True)
        for _ in range(3):
            r = await c.recv(timeout=PING_INTERVAL * 3)
            assert r == pb.Reply()  # the ping: an empty Reply
            assert r.SerializeToString() == b""
            await c.ws.send_bytes(b"\x00")  # the pong: an empty Command
        # Still connected and served after three ping rounds.
        ch = f"chat:ping-{uid()}"
        await c.ok(subscribe=pb.SubscribeRequest(channel=ch))
        stats = await c.ok(presence_stats=pb.PresenceStatsRequest(channel=ch))
        assert stats.num_clients == 1


async def test_raw_missing_pong_closes_3012(ping_srv: ServerHandle) -> None:
    async with pb_ws(ping_srv, token=ping_srv.token("silent")) as c:
        assert await c.recv(timeout=PING_INTERVAL * 3) == pb.Reply()
        assert await c.closed(timeout=PING_INTERVAL * 4) == (3012, "no pong")


# --------------------------------------------------------------------------------------------
# centrifuge-python with use_protobuf=True


class PingCountingClient(Client):
    """Instrumentation only: the SDK has no ping event; record each ping it answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings: asyncio.Queue[str] = asyncio.Queue()

    async def _handle_ping(self) -> None:
        await super()._handle_ping()
        self.pings.put_nowait(self.client_id)


@pytest.fixture
async def sdk(srv: ServerHandle) -> AsyncIterator[Callable[..., tuple[Client, ClientEvents]]]:
    created: list[Client] = []

    def make(token: str, cls: type[Client] = Client, url: str = "") -> tuple[Client, ClientEvents]:
        ev = ClientEvents()
        client = cls(
            url or srv.ws_url,
            events=ev,
            token=token,
            use_protobuf=True,
            proxy=None,
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.5,
        )
        created.append(client)
        return client, ev

    yield make
    for client in created:
        await client.disconnect()


@pytest.fixture
async def api(srv: ServerHandle) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(srv.api_url, srv.api_key)
    yield client
    await client.close()


async def connected(client: Client, ev: ClientEvents) -> Any:
    await client.connect()
    assert client.state != ClientState.DISCONNECTED, ev.log
    return await ev.next("connected")


async def subscribed(client: Client, ch: str) -> tuple[Subscription, SubEvents]:
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev)
    await sub.subscribe()
    await sev.next("subscribed")
    return sub, sev


async def test_sdk_connect_subscribe_publication(srv: ServerHandle, sdk: Any, api: Any) -> None:
    ch = f"chat:py-{uid()}"
    client, ev = sdk(srv.token("py-" + uid(), ttl=3600))
    ctx = await connected(client, ev)
    uuid.UUID(ctx.client)
    assert ctx.version == VERSION_STRING
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev)
    await sub.subscribe()
    sctx = await sev.next("subscribed")
    assert (sctx.recoverable, sctx.positioned, sctx.stream_position.offset) == (True, True, 0)

    res = await api.publish(PublishRequest(channel=ch, data={"text": "hello"}, tags={"k": "v"}))
    pub = (await sev.next("publication")).pub
    assert json.loads(pub.data) == {"text": "hello"}
    assert (pub.offset, pub.tags, pub.info) == (1, {"k": "v"}, None)
    assert res.epoch == sctx.stream_position.epoch

    payload = b"\x00\x01\xfe\xff binary"
    await srv.api_async("publish", {"channel": ch, "b64data": base64.b64encode(payload).decode()})
    pub = (await sev.next("publication")).pub
    assert (pub.data, pub.offset) == (payload, 2)


async def test_sdk_client_publish_with_info(srv: ServerHandle, sdk: Any) -> None:
    ch = f"chat:pypub-{uid()}"
    reader, rev = sdk(srv.token("reader"))
    await connected(reader, rev)
    _, sev = await subscribed(reader, ch)
    writer, wev = sdk(srv.token("writer", info={"name": "W"}))
    wctx = await connected(writer, wev)
    await writer.publish(ch, b'{"msg":"from pb"}')
    pub = (await sev.next("publication")).pub
    assert (pub.data, pub.offset) == (b'{"msg":"from pb"}', 1)
    assert (pub.info.user, pub.info.client) == ("writer", wctx.client)
    assert json.loads(pub.info.conn_info) == {"name": "W"}
    with pytest.raises(ReplyError) as exc:
        await writer.publish(f"nons-{uid()}:x", b"1")
    assert exc.value.code == 102


async def test_sdk_presence_and_history(srv: ServerHandle, sdk: Any, api: Any) -> None:
    ch = f"chat:pyph-{uid()}"
    a, aev = sdk(srv.token("pa", info={"n": "A"}))
    actx = await connected(a, aev)
    asub, asev = await subscribed(a, ch)
    b, bev = sdk(srv.token("pb"))
    bctx = await connected(b, bev)
    await subscribed(b, ch)

    presence = await asub.presence()
    assert set(presence.clients) == {actx.client, bctx.client}
    info = presence.clients[actx.client]
    assert (info.user, info.client, json.loads(info.conn_info)) == ("pa", actx.client, {"n": "A"})
    stats = await asub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)

    epoch = ""
    for i in range(1, 5):
        epoch = (await api.publish(PublishRequest(channel=ch, data={"i": i}))).epoch
    for i in range(1, 5):
        assert (await asev.next("publication")).pub.offset == i
    res = await asub.history(limit=2)
    assert [(json.loads(p.data), p.offset) for p in res.publications] == [
        ({"i": 1}, 1),
        ({"i": 2}, 2),
    ]
    assert (res.offset, res.epoch) == (4, epoch)
    res = await asub.history(limit=2, reverse=True)
    assert [p.offset for p in res.publications] == [4, 3]
    res = await asub.history(limit=10, since=StreamPosition(offset=2, epoch=epoch))
    assert [p.offset for p in res.publications] == [3, 4]
    res = await asub.history(limit=0)
    assert (res.publications, res.offset) == ([], 4)
    with pytest.raises(ReplyError) as exc:
        await asub.history(limit=1, since=StreamPosition(offset=1, epoch="x" + epoch))
    assert exc.value.code == 112


async def test_sdk_recovery_after_reconnect(srv: ServerHandle, sdk: Any, api: Any) -> None:
    user = "rec-" + uid()
    ch = f"chat:pyrec-{uid()}"
    client, ev = sdk(srv.token(user))
    ctx1 = await connected(client, ev)
    _, sev = await subscribed(client, ch)
    await api.publish(PublishRequest(channel=ch, data={"i": 1}))
    assert (await sev.next("publication")).pub.offset == 1

    async def publish_while_disconnected(cctx: Any) -> None:
        # The SDK reconnects only after its on_connecting handler returns.
        if cctx.code == 4001:
            for i in (2, 3):
                await api.publish(PublishRequest(channel=ch, data={"i": i}))

    ev.hooks["connecting"] = publish_while_disconnected
    await api.disconnect(
        DisconnectRequest(
            user=user, client=ctx1.client, disconnect=Disconnect(code=4001, reason="r")
        )
    )
    assert (await ev.next("connecting")).code == 0  # the first connect
    cctx = await ev.next("connecting")
    assert (cctx.code, cctx.reason) == (4001, "r")
    ctx2 = await ev.next("connected")
    assert ctx2.client != ctx1.client
    sctx = await _next_recovering(sev)
    assert (sctx.was_recovering, sctx.recovered) == (True, True)
    pubs = [(await sev.next("publication")).pub for _ in range(2)]
    assert [(json.loads(p.data), p.offset) for p in pubs] == [({"i": 2}, 2), ({"i": 3}, 3)]


async def _next_recovering(sev: SubEvents) -> Any:
    while True:
        sctx = await sev.next("subscribed")
        if sctx.was_recovering:
            return sctx


async def test_sdk_disconnect_codes(srv: ServerHandle, sdk: Any, api: Any) -> None:
    user = "kick-" + uid()
    client, ev = sdk(srv.token(user))
    ctx = await connected(client, ev)
    await api.disconnect(
        DisconnectRequest(
            user=user, client=ctx.client, disconnect=Disconnect(code=4501, reason="banned")
        )
    )
    dctx = await ev.next("disconnected")
    assert (dctx.code, dctx.reason) == (4501, "banned")
    assert client.state == ClientState.DISCONNECTED


async def test_sdk_ping_pong(ping_srv: ServerHandle, sdk: Any) -> None:
    client, ev = sdk(ping_srv.token("pinger"), cls=PingCountingClient, url=ping_srv.ws_url)
    ctx = await connected(client, ev)
    assert (client._ping_interval, client._send_pong) == (PING_INTERVAL, True)
    for _ in range(3):
        assert await asyncio.wait_for(client.pings.get(), PING_INTERVAL * 4) == ctx.client
    assert client.state == ClientState.CONNECTED
    assert ev.names() == ["connecting", "connected"]


# --------------------------------------------------------------------------------------------
# centrifuge-js, Protobuf build


@pytest.fixture
def js_pb() -> Callable[..., Any]:
    reason = node_available()
    if reason is not None:
        pytest.skip(reason)

    async def run(srv: ServerHandle, script: str, **env: str) -> dict:
        return await run_js_async(script, srv.js_env(CF_PROTOBUF="1", **env), timeout=20.0)

    return run


JS_HELPERS = """
const dec = (u8) => new TextDecoder().decode(u8);
const enc = (obj) => new TextEncoder().encode(JSON.stringify(obj));
const num = (v) => (v === undefined || v === null ? 0 : Number(v));
"""


async def test_js_protobuf_full_flow(srv: ServerHandle, js_pb: Any) -> None:
    out = await js_pb(
        srv,
        JS_HELPERS
        + """
        const a = newClient({ token: token('jsa', { info: { who: 'A' } }) });
        const b = newClient({ token: token('jsb') });
        a.connect();
        b.connect();
        const actx = await waitEvent(a, 'connected');
        await waitEvent(b, 'connected');
        const sub = a.newSubscription(env.CH);
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        const sctx = await waitEvent(sub, 'subscribed');
        const bsub = b.newSubscription(env.CH);
        const bpubs = collect(bsub, 'publication');
        bsub.subscribe();
        await waitEvent(bsub, 'subscribed');

        const res = await api('publish', { channel: env.CH, data: { text: 'hi' }, tags: { t: 'x' } });
        await api('publish', { channel: env.CH, b64data: Buffer.from([0, 1, 2, 255]).toString('base64') });
        await a.publish(env.CH, enc({ from: 'js' }));
        await waitUntil(bsub, 'publication', () => bpubs.length >= 3, 5000, 'b publications');
        await waitUntil(sub, 'publication', () => pubs.length >= 3, 5000, 'a publications');

        const presence = await sub.presence();
        const stats = await sub.presenceStats();
        const hist = await sub.history({ limit: 10 });
        const rev = await sub.history({ limit: 1, reverse: true });
        return {
          client: actx.client,
          transport: actx.transport,
          apiOffset: res.result.offset,
          sub: { recoverable: sctx.recoverable, positioned: sctx.positioned, epoch: sctx.streamPosition.epoch },
          pubs: bpubs.map((p) => ({ data: Array.from(p.data), offset: num(p.offset), tags: p.tags || {},
                                     info: p.info ? { user: p.info.user, client: p.info.client,
                                                     connInfo: p.info.connInfo ? dec(p.info.connInfo) : null } : null })),
          first: dec(bpubs[0].data),
          clients: Object.keys(presence.clients).length,
          presenceInfo: dec(presence.clients[actx.client].connInfo),
          stats: { clients: stats.numClients, users: stats.numUsers },
          hist: { offsets: hist.publications.map((p) => num(p.offset)), offset: num(hist.offset), epoch: hist.epoch },
          rev: rev.publications.map((p) => num(p.offset)),
        };
        """,
        CH=f"chat:jspb-{uid()}",
    )
    assert out["transport"] == "websocket"
    assert out["sub"]["recoverable"] is True and out["sub"]["positioned"] is True
    assert out["apiOffset"] == 1
    assert json.loads(out["first"]) == {"text": "hi"}
    pubs = out["pubs"]
    assert [p["offset"] for p in pubs] == [1, 2, 3]
    assert pubs[0]["tags"] == {"t": "x"} and pubs[0]["info"] is None
    assert pubs[1]["data"] == [0, 1, 2, 255]  # binary payload, only possible over Protobuf
    assert bytes(pubs[2]["data"]) == b'{"from":"js"}'
    assert pubs[2]["info"] == {"user": "jsa", "client": out["client"], "connInfo": '{"who":"A"}'}
    assert out["clients"] == 2
    assert json.loads(out["presenceInfo"]) == {"who": "A"}
    assert out["stats"] == {"clients": 2, "users": 2}
    assert out["hist"] == {"offsets": [1, 2, 3], "offset": 3, "epoch": out["sub"]["epoch"]}
    assert out["rev"] == [3]


async def test_js_protobuf_recovery(srv: ServerHandle, js_pb: Any) -> None:
    out = await js_pb(
        srv,
        JS_HELPERS
        + """
        const c = newClient({ token: token('jsrec') });
        const sub = c.newSubscription(env.CH);
        const pubs = collect(sub, 'publication');
        const subs = collect(sub, 'subscribed');
        sub.subscribe();
        c.connect();
        await waitEvent(sub, 'subscribed');
        await api('publish', { channel: env.CH, data: { n: 1 } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'live');
        c.disconnect();
        for (let n = 2; n <= 4; n++) await api('publish', { channel: env.CH, data: { n } });
        c.connect();
        await waitUntil(sub, 'subscribed', () => subs.length >= 2, 5000, 'resubscribe');
        await waitUntil(sub, 'publication', () => pubs.length >= 4, 5000, 'recovered');
        return {
          second: { wasRecovering: subs[1].wasRecovering, recovered: subs[1].recovered,
                    epochSame: subs[1].streamPosition.epoch === subs[0].streamPosition.epoch },
          pubs: pubs.map((p) => [JSON.parse(dec(p.data)).n, num(p.offset)]),
        };
        """,
        CH=f"chat:jsrec-{uid()}",
    )
    assert out["second"] == {"wasRecovering": True, "recovered": True, "epochSame": True}
    assert out["pubs"] == [[1, 1], [2, 2], [3, 3], [4, 4]]


async def test_js_protobuf_disconnect_codes(srv: ServerHandle, js_pb: Any) -> None:
    out = await js_pb(
        srv,
        """
        const c = newClient({ token: token(env.USER), minReconnectDelay: 50, maxReconnectDelay: 100 });
        const conns = collect(c, 'connected');
        c.connect();
        await waitEvent(c, 'connected');
        const connecting = waitEvent(c, 'connecting');
        await api('disconnect', { user: env.USER, disconnect: { code: 4001, reason: 'come back' } });
        const cctx = await connecting;
        await waitUntil(c, 'connected', () => conns.length >= 2, 5000, 'reconnect');
        const disconnected = waitEvent(c, 'disconnected');
        await api('disconnect', { user: env.USER, disconnect: { code: 4501, reason: 'banned' } });
        const dctx = await disconnected;
        return { reconnect: [cctx.code, cctx.reason], terminal: [dctx.code, dctx.reason],
                 ids: conns.map((x) => x.client), state: c.state };
        """,
        USER="jsdis-" + uid(),
    )
    assert out["reconnect"] == [4001, "come back"]
    assert out["terminal"] == [4501, "banned"]
    assert len(set(out["ids"])) == 2
    assert out["state"] == "disconnected"


async def test_js_protobuf_ping_pong(ping_srv: ServerHandle, js_pb: Any) -> None:
    out = await js_pb(
        ping_srv,
        """
        // Count pings (an empty Reply: the single byte 0) and the SDK's pongs on the socket.
        let pings = 0;
        let pongs = 0;
        const isEmpty = (d) => { const b = Buffer.from(d); return b.length === 1 && b[0] === 0; };
        class CountingWS extends WebSocket {
          constructor(...args) {
            super(...args);
            this.on('message', (d) => { if (isEmpty(d)) { pings++; bus.emit('tick'); } });
          }
          send(data, ...rest) {
            if (isEmpty(data)) { pongs++; bus.emit('tick'); }
            return super.send(data, ...rest);
          }
        }
        const c = newClient({ token: token('jsping'), websocket: CountingWS });
        const disconnects = collect(c, 'disconnected');
        const connecting = collect(c, 'connecting');
        c.connect();
        const ctx = await waitEvent(c, 'connected');
        await waitUntil(bus, 'tick', () => pongs >= 3, 8000, 'three pongs');
        return { pings, pongs, state: c.state, disconnects: disconnects.length,
                 reconnects: connecting.length, client: ctx.client };
        """,
    )
    assert out["pongs"] >= 3 and out["pings"] >= out["pongs"]
    assert out["state"] == "connected"
    assert (out["disconnects"], out["reconnects"]) == (0, 1)
